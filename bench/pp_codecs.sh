#!/usr/bin/env bash
# Convergence of pipeline training with compressed stage boundaries (issue 24): the small
# preset on real text (data/ft-base: the web corpus under its SentencePiece tokenizer), 2
# stages (mpirun -np 2 --pp 2, 1F1B), the same initial weights and batches for every codec;
# per codec the held-out loss after STEPS steps, its difference from uncompressed, the bytes
# each step sends forward and back, and bits per element of the activations on the wire.
# WARM (epochs, default 0) is sent uncompressed first by the delta codecs (AQ-SGD's default is
# one epoch: its caches are filled from then on; on a corpus larger than the run's steps no
# window comes back, and delta is fixpoint of x - 0).
# usage: bench/pp_codecs.sh [STEPS] [DATA] [WARM]     (default 120 data/ft-base 0)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-120}
D=${2:-data/ft-base}
WARM=${3:-0}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
LLMQ=$out/llmq; cp build/llmq "$LLMQ"  # a copy: rebuilding during the run changes nothing
B=8 T=128
# MODEL=DIR starts from a trained model instead of the small preset's random weights (AQ-SGD's
# setting is fine-tuning: activations move little between visits of a window), LR sets the
# learning rate, ROWS='^(none|delta)' runs only the rows whose name matches that regular
# expression, EVAL=uncompressed evaluates without coding the validation activations (the
# held-out loss then measures the trained model, not the code of its evaluation).
SRC=(--preset small); [ -n "${MODEL:-}" ] && SRC=(--model "$MODEL")
ARGS=(train "${SRC[@]}" --data "$D" --steps "$STEPS" --batch $B --seq-len $T --lr "${LR:-2e-3}" --warmup 10 --log-every 10
      --eval-every "$STEPS" --eval-batches 16 --save-every 0 --sample-tokens 0 --json --pp 2 --micro-batches 4)
printf "%-34s %10s %9s %12s %12s %9s %8s\n" codec "val loss" "vs none" "fwd B/step" "bwd B/step" "fwd bits" "tok/s"
ref=""
row() {  # row NAME [flags]
  local name=$1; shift
  local j slug
  [ -z "${ROWS:-}" ] || [[ $name =~ $ROWS ]] || return 0
  [ "${EVAL:-}" = uncompressed ] && set -- "$@" --pp-eval-uncompressed
  slug=$(echo "$name" | tr -c 'a-z0-9\n' '_')
  j=$(mpirun -np 2 "$LLMQ" -t 1 "${ARGS[@]}" "$@" --out "$out/$slug" 2>"$out/$slug.log" | grep '^{' | tail -1) ||
    { tail -5 "$out/$slug.log"; return 1; }
  ref=$(/usr/bin/python3 - "$name" "$j" "$STEPS" "${ref:-none}" "$B" "$T" <<'PY'
import json, sys
name, j, steps, ref, B, T = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
r0, r1 = j["pipeline_ranks"]
fwd, bwd = r0["stage_fwd_bytes"] / steps, r1["stage_bwd_bytes"] / steps
values = B * T * 384  # activations per step (small preset: width 384)
vs = "" if ref == "none" else f"{(j['val_loss'] / float(ref) - 1) * 100:+.2f}%"
print(f"{name:<34} {j['val_loss']:>10.4f} {vs:>9} {fwd:>12.0f} {bwd:>12.0f} {fwd * 8 / values:>9.2f} {j['tokens_per_s']:>8.0f}", file=sys.stderr)
print(ref if ref != "none" else j["val_loss"])
PY
)
}
row "none" 2>&1
row "fixpoint 4 fwd / 6 bwd" --pp-compress-fwd fixpoint --pp-compress-bwd fixpoint 2>&1
row "tah 4/3 fwd / fixpoint 6 bwd" --pp-compress-fwd tah --pp-compress-bwd fixpoint 2>&1
row "tah 4/3 fwd, warm-up 0.02 epoch" --pp-compress-fwd tah --pp-compress-bwd fixpoint --pp-warmup-epochs 0.02 2>&1
row "fixpoint 8 fwd / 8 bwd" --pp-compress-fwd fixpoint --pp-compress-bwd fixpoint --fwd-bits 8 --bwd-bits 8 2>&1
row "delta 4 (fp16 cache) / fixp 6, warm $WARM" --pp-compress-fwd delta --pp-compress-bwd fixpoint --pp-warmup-epochs "$WARM" 2>&1
row "delta-lowbits 4 (4-bit) / fixp 6, warm $WARM" --pp-compress-fwd delta-lowbits --pp-compress-bwd fixpoint --pp-warmup-epochs "$WARM" 2>&1
row "fixpoint 2 fwd / 2 bwd (should lose)" --pp-compress-fwd fixpoint --pp-compress-bwd fixpoint --fwd-bits 2 --bwd-bits 2 2>&1
echo "summary: $STEPS steps of B $B x T $T on $D, held-out loss per codec against uncompressed (validation $([ "${EVAL:-}" = uncompressed ] && echo uncompressed || echo "coded as training"))"
