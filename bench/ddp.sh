#!/usr/bin/env bash
# Multi-process training speed and memory on this machine, the same global batch throughout:
# 1 process with 2 threads; 2 ranks (mpirun) with 1 thread each, data parallel with the
# gradient all-reduce overlapped with backward (default) and after it (--no-overlap); and
# 2 ranks fully sharded (--fsdp), and with the next unit's gather prefetched and reduce-scatters
# overlapped (--fsdp-overlap). Per row: tokens/s and its ratio to 1 process, per-rank
# bytes sent per step against `llmq plan`, rank 0's peak RSS against the plan's per-rank
# memory (the difference is the process: binary, libraries, MPI's shared-memory segments).
# usage: bench/ddp.sh [STEPS] [PRESET] [DATA]    (default 20 small data/small)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-20}
P=${2:-small}
D=${3:-data/small}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
ARGS=(train --preset "$P" --data "$D" --steps "$STEPS" --batch 8 --seq-len 256 --warmup 2 --log-every "$STEPS"
      --eval-every 0 --save-every 0 --sample-tokens 0 --json)
printf "%-22s %9s %7s %14s %10s %14s %12s\n" run "tok/s" "vs 1" "sent/step MB" "plan MB" "rank0 peak MB" "plan mem MB"
base=0
row() {  # row NAME RANKS [flags]
  local name=$1 n=$2; shift 2
  local j p plan_flags=()
  if [ "$n" = 1 ]; then j=$(build/llmq -t 2 "${ARGS[@]}" "$@" --out "$out/$name" 2>/dev/null | tail -1)
  else j=$(mpirun -np "$n" build/llmq -t 1 "${ARGS[@]}" "$@" --out "$out/$name" 2>/dev/null | grep '^{' | tail -1); fi
  [[ " $* " == *" --fsdp "* ]] && plan_flags=(--fsdp)
  p=$(build/llmq plan --preset "$P" --ranks "$n" "${plan_flags[@]}" --batch $((8 / n)) --seq-len 256 --json)
  base=$(/usr/bin/python3 - "$name" "$j" "$p" "$STEPS" "$base" <<'PY'
import json, sys
name, j, p, steps, base = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
tps = j["tokens_per_s"]
base = base or tps
print(f"{name:<22} {tps:9.0f} {tps / base:7.2f} {j['bytes_sent_per_rank'] / steps / 1e6:14.2f} "
      f"{p['comm_bytes_per_step_per_rank']['data_parallel'] / 1e6:10.2f} {j['peak_rss_bytes'] / 1e6:14.0f} "
      f"{p['per_rank_bytes']['total'] / 1e6:12.0f}", file=sys.stderr)
print(base)
PY
)
}
row "1 process x 2 threads" 1
row "2 ranks DDP" 2
row "2 ranks DDP no-overlap" 2 --no-overlap
row "2 ranks FSDP" 2 --fsdp
row "2 ranks FSDP --fsdp-overlap" 2 --fsdp --fsdp-overlap
echo "summary: $(date -u +%F), preset $P, global batch 8 x 256 tokens, $STEPS steps, OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}; tok/s is the last $STEPS steps' rate"
