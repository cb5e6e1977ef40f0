#!/usr/bin/env bash
# Data-parallel training over MPI (mpirun on this machine, ranks oversubscribed on 2 cores):
#  - 2 and 4 ranks follow the 1-rank loss (and gradient-norm) curve over 20 steps with the same global batch
#    within 1e-5 relative (only the order of the gradient sums differs: each rank sums its
#    share of the batch, then the shares are summed in rank order), with and without
#    gradient accumulation;
#  - the bytes each rank sends are what `llmq plan` computes;
#  - fully sharded (--fsdp) runs at 2 and 4 ranks follow the same curve, send the plan's bytes,
#    write sharded checkpoints (a file per rank) that resume at another world size (1
#    included) and export to the same bytes as a gathered checkpoint;
#  - a deterministic run gives bitwise identical weights when repeated, and so does the
#    all-reduce after backward (--no-overlap) against the default overlapped one;
#  - a run stopped at 1 rank resumes at 2 ranks on the same curve;
#  - adapter fine-tuning (DoRA on an HQQ-4 base) at 2 ranks follows the 1-process curve; with the
#    base sharded (--fsdp) the adapters are bitwise the replicated run's; at 4 ranks (untied, float
#    base, trained norms) the 1-process curve, and the run resumes at 2 ranks without --fsdp;
#  - quantization-aware training (qat, a teacher per rank) at 2 ranks, ddp and fsdp, on the 1-process curve;
#  - faults: a batch that does not split, ranks started with different options, a rank that
#    dies: every rank exits within seconds with a message (no hang).
# usage: tests/dist/ddp_test.sh LLMQ
set -euo pipefail
LLMQ=$(realpath "$1")
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
command -v mpirun >/dev/null || { echo "SKIP: mpirun not installed (scripts/setup installs openmpi-bin)"; exit 0; }
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
source "$ROOT/tests/dist/common.sh"
run() {  # run RANKS OUT [extra args]: one job; 1 rank runs without mpirun
  local n=$1 out=$2; shift 2
  local args=("${TRAIN[@]}" --out "$out" --lr 3e-3 --steps 20 --json "$@")
  [[ " $* " == *" --batch "* ]] || args+=(--batch 4)
  if [ "$n" = 1 ]; then "$LLMQ" -t 1 "${args[@]}" >"$out.log" 2>&1
  else timeout 300 mpirun -np "$n" "$LLMQ" -t 1 "${args[@]}" >"$out.log" 2>&1; fi
}

bytes_vs_plan() {  # bytes_vs_plan LOG STEPS PLAN_ARGS...: rank 0's bytes sent = STEPS (an expression) x plan's step, within 0.1%
  local log=$1 worth=$2; shift 2
  /usr/bin/python3 - "$log" "$worth" "$("$LLMQ" plan -m "$T" --seq-len 32 --batch 2 --json "$@")" <<'PY'
import json, sys
log, worth, plan = sys.argv[1], eval(sys.argv[2]), json.loads(sys.argv[3])  # worth: an arithmetic expression
run = [json.loads(l) for l in open(log) if l.startswith("{")][-1]
theory = worth * plan["comm_bytes_per_step_per_rank"]["data_parallel"]
print(f"{log.rsplit('/', 1)[-1]}: sent {run['bytes_sent_per_rank']} bytes per rank, plan {theory:.0f}")
sys.exit(0 if abs(run["bytes_sent_per_rank"] / theory - 1) <= 1e-3 else 1)
PY
}

run 1 "$T/r1" || { cat "$T/r1.log"; exit 1; }
# Data parallel (r2, r4) and fully sharded (f2, f4) runs against the 1-rank curve.
for mode in ddp fsdp; do
  for n in 2 4; do
    if [ $mode = ddp ]; then out="$T/r$n" extra=() mesh="dp=$n fsdp=1"; else out="$T/f$n" extra=(--fsdp) mesh="dp=1 fsdp=$n"; fi
    run $n "$out" "${extra[@]}" || { tail -20 "$out.log"; fail "$mode $n ranks"; continue; }
    grep -q "rank 1 of $n (mpi" "$out.log" || fail "$mode $n ranks: no rank line"
    grep -q "mesh $mesh" "$out.log" || fail "$mode $n ranks: no mesh line"
    echo -n "$mode $n ranks vs 1: "; same_curve "$T/r1" "$out" || fail "$mode $n ranks: loss curve differs"
  done
done
# Bytes each rank sent, against `llmq plan`. Data parallel: the gradient all-reduce, 2 (N-1)/N
# of the f32 gradients per step, for 20 steps (measured adds the loss sums, the config check
# and the validation sums, a few hundred bytes). FSDP: the per-step all-gathers before
# forward and backward and the reduce-scatter after, for 20 steps, plus the two validation
# passes (2 batches each, one all-gather per batch: 2/3 of a step's traffic); the two
# checkpoints send nothing (sharded: each rank writes its own file).
bytes_vs_plan "$T/r2.log" 20 --ranks 2 || fail "bytes vs plan"
bytes_vs_plan "$T/f2.log" "20 + 2 * 2/3" --ranks 2 --fsdp || fail "fsdp bytes vs plan"
# FSDP's overlap (prefetched gathers, reduce-scatters behind the next unit's backward) runs the
# same collectives on the same data in the same order: bitwise the same weights as without.
run 2 "$T/f2n" --fsdp --checkpoint-format full || fail "fsdp run"
run 2 "$T/f2o" --fsdp --fsdp-overlap --checkpoint-format full || fail "fsdp --fsdp-overlap run"
cmp -s "$T/f2n/checkpoint-000020/model.safetensors" "$T/f2o/checkpoint-000020/model.safetensors" \
  && cmp -s "$T/f2n/checkpoint-000020/train_state.bin" "$T/f2o/checkpoint-000020/train_state.bin" \
  && echo "fsdp overlapped vs not: bitwise equal weights and optimizer state" || fail "fsdp overlap changes the result"
# Gradient accumulation: 2 micro-batches of 2 windows = the same global batch of 4.
run 1 "$T/a1" --batch 2 --grad-accum 2 && run 2 "$T/a2" --batch 2 --grad-accum 2 || fail "grad-accum runs"
echo -n "grad-accum 2 ranks vs 1: "; same_curve "$T/a1" "$T/a2" || fail "grad-accum: loss curve differs"
run 2 "$T/a3" --batch 2 --grad-accum 2 --fsdp || fail "fsdp grad-accum run"
echo -n "fsdp grad-accum 2 ranks vs 1: "; same_curve "$T/a1" "$T/a3" || fail "fsdp grad-accum: loss curve differs"
# The gradient all-reduce overlapped with backward (default) gives the same weights, byte for
# byte, as the all-reduce after backward.
run 2 "$T/no" --no-overlap || fail "--no-overlap run"
cmp -s "$T/r2/checkpoint-000020/model.safetensors" "$T/no/checkpoint-000020/model.safetensors" &&
  echo "overlapped all-reduce = all-reduce after backward, byte for byte" || fail "overlap changes the weights"
# Deterministic: the same job twice gives the same bytes.
run 2 "$T/d1" --deterministic && run 2 "$T/d2" --deterministic || fail "deterministic runs"
cmp -s "$T/d1/checkpoint-000020/model.safetensors" "$T/d2/checkpoint-000020/model.safetensors" ||
  fail "deterministic 2-rank runs wrote different weights"
# Stop at step 10 on 1 rank, resume on 2 ranks: the rest of the 1-rank curve.
run 1 "$T/s" --stop-after 10 && run 2 "$T/s" --resume || fail "stop/resume runs"
echo -n "resumed on 2 ranks vs 1: "; same_curve "$T/r1" "$T/s" || fail "resume at another world size"
# FSDP checkpoints are sharded: each rank writes its own file. Stopped at 4 ranks, resumed at
# 2 (FSDP) and at 1 process (no FSDP): both continue the 1-rank curve.
run 4 "$T/fs" --fsdp --stop-after 10 || fail "fsdp 4-rank run"
for r in 0 1 2 3; do [ -f "$T/fs/checkpoint-000010/shard-0000$r-of-00004.bin" ] || fail "no shard file of rank $r"; done
[ ! -e "$T/fs/checkpoint-000010/model.safetensors" ] || fail "a sharded checkpoint holds gathered weights"
cp -r "$T/fs" "$T/fs1"
run 2 "$T/fs" --fsdp --resume || fail "fsdp resume at 2 ranks"
echo -n "fsdp 4 ranks stopped, resumed on 2, vs 1 rank: "; same_curve "$T/r1" "$T/fs" || fail "fsdp resume at another world size"
run 1 "$T/fs1" --resume || fail "resume of a sharded checkpoint in one process"
echo -n "fsdp 4 ranks stopped, resumed in 1 process, vs 1 rank: "; same_curve "$T/r1" "$T/fs1" || fail "sharded resume at 1"
# A sharded checkpoint exported as a model directory is byte for byte the full-format
# checkpoint of the same (deterministic) run, and generation loads it; a sharded directory
# given as a model says how to export it; a missing shard is named.
run 2 "$T/ff" --fsdp --checkpoint-format full || fail "fsdp run with full checkpoints"
"$LLMQ" export -m "$T/f2/checkpoint-000020" --format hf --type f32 --out "$T/f2hf" >/dev/null || fail "export --format hf"
cmp -s "$T/f2hf/model.safetensors" "$T/ff/checkpoint-000020/model.safetensors" &&
  echo "exported sharded checkpoint = full checkpoint, byte for byte" || fail "exported sharded checkpoint differs from the full one"
"$LLMQ" generate -m "$T/f2hf" --max-new-tokens 4 --prompt "In the" >/dev/null 2>&1 || fail "generate on the exported directory"
! "$LLMQ" generate -m "$T/f2/checkpoint-000020" --max-new-tokens 4 --prompt "In the" >"$T/err.log" 2>&1 &&
  grep -q "llmq export" "$T/err.log" || fail "a sharded checkpoint as a model does not name the export"
rm "$T/fs/checkpoint-000020/shard-00001-of-00002.bin"
! "$LLMQ" -t 1 "${TRAIN[@]}" --out "$T/fs" --lr 3e-3 --steps 30 --batch 4 --resume >"$T/err.log" 2>&1 &&
  grep -q "shard-00001-of-00002.bin: missing" "$T/err.log" || fail "a missing shard is not named"

# Adapter fine-tuning (issue 22) data parallel: 2 ranks follow the 1-process curve (DoRA on an
# HQQ-4 base quantized while loading), the all-reduce carrying only the adapters' gradients.
"$LLMQ" init --config "$T/config.json" --out "$T/base" --dtype f32 --seed 3 >/dev/null 2>&1 || fail "init the base"
FT=(finetune -m "$T/base" --data "$T/data" --seq-len 32 --warmup 2 --log-every 1 --eval-every 10 --eval-batches 2
    --save-every 10 --rank 4 --adapter dora --quantize-base hqq4 --lr 3e-3 --steps 20 --batch 4 --json)
"$LLMQ" -t 1 "${FT[@]}" --out "$T/ft1" > "$T/ft1.log" 2>&1 || { tail -5 "$T/ft1.log"; fail "finetune, 1 process"; }
timeout 300 mpirun -np 2 "$LLMQ" -t 1 "${FT[@]}" --out "$T/ft2" > "$T/ft2.log" 2>&1 || { tail -5 "$T/ft2.log"; fail "finetune, 2 ranks"; }
echo -n "finetune 2 ranks vs 1: "; same_curve "$T/ft1" "$T/ft2" || fail "finetune 2 ranks: loss curve differs"
# The frozen base sharded over the ranks (--fsdp, train/base_shard.h): the same products on
# the same values as the replicated base, so the adapters are bitwise those of the
# data-parallel run; rank 1 holds the blocks and receives the embeddings it lacks.
timeout 300 mpirun -np 2 "$LLMQ" -t 1 "${FT[@]}" --fsdp --out "$T/ft2s" > "$T/ft2s.log" 2>&1 || { tail -5 "$T/ft2s.log"; fail "finetune --fsdp, 2 ranks"; }
cmp -s "$T/ft2/checkpoint-000020/adapter_model.safetensors" "$T/ft2s/checkpoint-000020/adapter_model.safetensors" &&
  echo "finetune --fsdp 2 ranks: adapters bitwise equal to the replicated base's" || fail "finetune --fsdp: adapters differ from the replicated run"
# Untied embeddings, a float base, trained norms, 4 ranks: the 1-process curve; stopped at step
# 10, it resumes at 2 ranks without --fsdp on the same curve (the checkpoint is a plain adapter).
sed 's/"tie_word_embeddings": true/"tie_word_embeddings": false/' "$T/config.json" > "$T/config_untied.json"
"$LLMQ" init --config "$T/config_untied.json" --out "$T/base_u" --dtype f32 --seed 4 >/dev/null 2>&1 || fail "init the untied base"
FTU=(finetune -m "$T/base_u" --data "$T/data" --seq-len 32 --warmup 2 --log-every 1 --eval-every 10 --eval-batches 2
     --save-every 10 --rank 4 --train-norms --lr 3e-3 --steps 20 --batch 4 --json)
"$LLMQ" -t 1 "${FTU[@]}" --out "$T/fu1" > "$T/fu1.log" 2>&1 || { tail -5 "$T/fu1.log"; fail "untied finetune, 1 process"; }
timeout 300 mpirun -np 4 "$LLMQ" -t 1 "${FTU[@]}" --fsdp --out "$T/fu4" > "$T/fu4.log" 2>&1 || { tail -5 "$T/fu4.log"; fail "finetune --fsdp, 4 ranks"; }
echo -n "finetune --fsdp 4 ranks (untied, float base) vs 1: "; same_curve "$T/fu1" "$T/fu4" || fail "finetune --fsdp 4 ranks: curve differs"
rm -rf "$T/fu4/checkpoint-000020"; echo checkpoint-000010 > "$T/fu4/latest"
timeout 300 mpirun -np 2 "$LLMQ" -t 1 "${FTU[@]}" --resume --out "$T/fu4" > "$T/fu4r.log" 2>&1 || { tail -5 "$T/fu4r.log"; fail "resume at 2 ranks"; }
echo -n "finetune --fsdp 4 ranks, resumed at 2 without --fsdp: "; same_curve "$T/fu1" "$T/fu4" || fail "finetune resume: curve differs"
# An already-quantized base (RTN-4 directory): each rank loads only its units; adapters bitwise
# those of the replicated base.
"$LLMQ" quantize -m "$T/base_u" --method rtn --group 32 --out "$T/base_q" >/dev/null 2>&1 || fail "quantize the base"
for mode in dp fsdp; do
  timeout 300 mpirun -np 2 "$LLMQ" -t 1 finetune -m "$T/base_q" --data "$T/data" --seq-len 32 --warmup 2 --eval-every 5 \
    --eval-batches 2 --save-every 10 --rank 4 --adapter dora --lr 3e-3 --steps 10 --batch 4 $([ $mode = fsdp ] && echo --fsdp) \
    --out "$T/fq_$mode" > "$T/fq_$mode.log" 2>&1 || { tail -5 "$T/fq_$mode.log"; fail "finetune on a quantized base, $mode"; }
done
cmp -s "$T/fq_dp/checkpoint-000010/adapter_model.safetensors" "$T/fq_fsdp/checkpoint-000010/adapter_model.safetensors" &&
  echo "finetune --fsdp on a quantized directory: adapters bitwise equal to the replicated base's" ||
  fail "finetune --fsdp on a quantized base: adapters differ"

# Quantization-aware training (issue 23) data parallel and fully sharded: each rank runs the
# teacher on its share of the batch; 2 ranks follow the 1-process curve: cross-entropy, validation
# loss and gradient norm. Half the loss is the cross-entropy: on this random model near the
# uniform distribution the KL alone is 1e-7..1e-5, at the level of f32 rounding in the logits,
# and AdamW turns its noise-level gradients into full steps (pure KD runs drift apart by ~1%
# after 10 steps); with a real signal the curves agree to ~1e-7.
QT=(qat -m "$T/base_u" --data "$T/data" --scheme w4a8kv4 --kd-weight 0.5 --seq-len 32 --log-every 1 --eval-every 10 --eval-batches 2
    --save-every 10 --lr 3e-3 --steps 20 --batch 4 --json)
"$LLMQ" -t 1 "${QT[@]}" --out "$T/q1" > "$T/q1.log" 2>&1 || { tail -5 "$T/q1.log"; fail "qat, 1 process"; }
for mode in ddp fsdp; do
  timeout 300 mpirun -np 2 "$LLMQ" -t 1 "${QT[@]}" $([ $mode = fsdp ] && echo --fsdp) --out "$T/q2$mode" > "$T/q2$mode.log" 2>&1 ||
    { tail -5 "$T/q2$mode.log"; fail "qat, 2 ranks $mode"; }
  echo -n "qat 2 ranks ($mode) vs 1: "; same_curve "$T/q1" "$T/q2$mode" 20 "ce val_loss grad_norm" || fail "qat 2 ranks $mode: curve differs"
done
[ -f "$T/q2ddp/quantized/config.json" ] || fail "qat under mpirun wrote no quantized model"

# Faults: each must end within seconds with one message naming the problem.
expect_job_error "does not split over 2 ranks" -- -np 2 "$LLMQ" -t 1 "${TRAIN[@]}" --steps 20 --batch 3 --out "$T/e1"
expect_job_error "disagree on the training options" -- -np 1 "$LLMQ" -t 1 "${TRAIN[@]}" --steps 20 --batch 4 --out "$T/e2" --lr 1e-3 \
  : -np 1 "$LLMQ" -t 1 "${TRAIN[@]}" --steps 20 --batch 4 --out "$T/e2" --lr 2e-3
# A rank killed mid-run: mpirun ends the job.
cat > "$T/die.sh" <<SH
#!/usr/bin/env bash
if [ "\$OMPI_COMM_WORLD_RANK" = 1 ]; then ( sleep 3; kill -9 \$\$ ) & fi
exec "$LLMQ" -t 1 ${TRAIN[*]} --batch 4 --steps 100000 --out "$T/e3"
SH
chmod +x "$T/die.sh"
expect_job_error "exited on signal 9\|killed\|terminated" -- -np 2 "$T/die.sh"

[ $fails -eq 0 ] || { echo "$fails failure(s)"; exit 1; }
echo "data-parallel training: all cases passed"
