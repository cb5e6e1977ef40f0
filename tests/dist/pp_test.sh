#!/usr/bin/env bash
# Pipeline-parallel training over MPI (mpirun on this machine, ranks oversubscribed on 2 cores),
# a 4-block model (tied embeddings, and an untied copy):
#  - --pp 2 and --pp 4, GPipe and 1F1B, follow the 1-process loss, validation loss and
#    gradient-norm curve over 20 steps within 1e-5 relative (the same batch; only the order of
#    the sums differs: micro-batch gradients accumulate one after another, and the norm is
#    summed over stages), with 2 and 4 micro-batches, an uneven --pp-split, and with data
#    parallel beside them (--pp 2 on 4 ranks: 2 replicas of 2 stages);
#  - checkpoints are plain model directories: a --pp 2 run stopped at step 10 resumes at
#    --pp 4 and in one process, on the same curve, and its weights equal the 1-process run's;
#  - compressed boundaries (fixpoint, tah) train and send the formula's bytes; warm-up epochs go uncompressed;
#    delta codecs keep equal caches on both ends and resume exactly;
#  - --profile-trace writes a Chrome trace with every rank's forward, backward and messages;
#  - faults: a message with a wrong checksum or length stops the job naming the stage and the
#    micro-batch; ranks with different --pp options are refused at the start; a stage killed
#    mid-step ends the job; bad --pp, --pp-split and --micro-batches get one message each.
# usage: tests/dist/pp_test.sh LLMQ
set -euo pipefail
LLMQ=$(realpath "$1")
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
command -v mpirun >/dev/null || { echo "SKIP: mpirun not installed (scripts/setup installs openmpi-bin)"; exit 0; }
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
source "$ROOT/tests/dist/common.sh"
# Four blocks (common.sh's config has two): --pp 4 gives each stage one.
sed 's/"num_hidden_layers": 2/"num_hidden_layers": 4/' "$T/config.json" > "$T/config4.json"
sed 's/"tie_word_embeddings": true/"tie_word_embeddings": false/' "$T/config4.json" > "$T/config4u.json"
PT=(train --data "$T/data" --seq-len 32 --warmup 2 --log-every 1 --eval-every 10 --eval-batches 2 --sample-tokens 0
    --lr 3e-3 --batch 4 --json)  # + --steps, --save-every
run() {  # run RANKS OUT CONFIG [extra args]: one job; 1 rank runs without mpirun
  local n=$1 out=$2 cfg=$3; shift 3
  local args=("${PT[@]}" --config "$cfg" --out "$out" "$@")
  [[ " $* " == *" --steps "* ]] || args+=(--steps 20)
  [[ " $* " == *" --save-every "* ]] || args+=(--save-every 10)
  if [ "$n" = 1 ]; then "$LLMQ" -t 1 "${args[@]}" >"$out.log" 2>&1
  else timeout 300 mpirun -np "$n" "$LLMQ" -t 1 "${args[@]}" >"$out.log" 2>&1; fi
}

run 1 "$T/r1" "$T/config4.json" || { cat "$T/r1.log"; exit 1; }
run 1 "$T/u1" "$T/config4u.json" || { cat "$T/u1.log"; exit 1; }
check() {  # check NAME REF RANKS [args]: a pipeline run against the 1-process curve REF
  local name=$1 ref=$2 n=$3; shift 3
  local cfg="$T/config4.json"; [ "$ref" = "$T/u1" ] && cfg="$T/config4u.json"
  run "$n" "$T/$name" "$cfg" "$@" || { tail -20 "$T/$name.log"; fail "$name: run failed"; return; }
  echo -n "$name ($*): "; same_curve "$ref" "$T/$name" || fail "$name: loss curve differs from one process"
}
check p2-1f1b "$T/r1" 2 --pp 2
check p2-gpipe "$T/r1" 2 --pp 2 --pp-schedule gpipe --micro-batches 4
check p4-1f1b "$T/r1" 4 --pp 4 --micro-batches 4
check p4-gpipe "$T/r1" 4 --pp 4 --pp-schedule gpipe --micro-batches 2
check p2-split "$T/r1" 2 --pp 2 --pp-split 3,1 --micro-batches 1
check p2-dp2 "$T/r1" 4 --pp 2 --micro-batches 2
check p2-dp2-gpipe "$T/r1" 4 --pp 2 --pp-schedule gpipe --micro-batches 1
check p2-untied "$T/u1" 2 --pp 2 --micro-batches 4
check p4-untied "$T/u1" 4 --pp 4 --pp-schedule gpipe
grep -q "mesh pp=2 dp=2 fsdp=1 tp=1, stage 1 (block 3, head)" "$T/p2-dp2.log" || fail "no mesh line naming the stage"
grep -q "stage 0 (blocks 0-2, embeddings)" "$T/p2-split.log" || fail "--pp-split 3,1 not followed"

# Compressed stage boundaries (dist/stage_wire.h; the codecs' arithmetic against the float64
# reference: tests/pipeline_test.cpp). Here: the job runs, trains (within 2% of the f32 loss
# after 20 steps: a 4-bit code of a 32-wide toy model is still a close copy), and the bytes each
# stage sent are the formula's: head + fp16 scale per channel + codes, per micro-batch and step
# (2 micro-batches of 2 x 32 rows, width 32); uncompressed warm-up epochs follow the f32 curve.
check_codec() {  # check_codec NAME FWD_BYTES_PER_MESSAGE BWD_BYTES_PER_MESSAGE args...
  local name=$1 fb=$2 bb=$3; shift 3
  run 2 "$T/$name" "$T/config4.json" --pp 2 "$@" || { tail -5 "$T/$name.log"; fail "$name: run failed"; return; }
  /usr/bin/python3 - "$T/$name.log" "$T/r1/metrics.jsonl" "$fb" "$bb" "$name" <<'PY' || fail "$name"
import json, sys
run = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")][-1]
ref = [json.loads(l) for l in open(sys.argv[2])][-1]
fb, bb, name = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
r0, r1 = run["pipeline_ranks"]
rel = abs(run["loss"] / ref["loss"] - 1)
print(f"{name}: loss {run['loss']:.4f} vs f32 {ref['loss']:.4f} ({rel:.2%}); sent {r0['stage_fwd_bytes']} forward, {r1['stage_bwd_bytes']} back")
ok = rel < 0.02
if fb: ok &= r0["stage_fwd_bytes"] == 20 * 2 * fb
if bb: ok &= r1["stage_bwd_bytes"] == 20 * 2 * bb
sys.exit(0 if ok else 1)
PY
}
# fixpoint 4 forward: 72 + 2*32 + 64*32*4/8 = 1160; fixpoint 6 back: 72 + 64 + 64*32*6/8 = 1672.
check_codec fixpoint 1160 1672 --pp-compress-fwd fixpoint --pp-compress-bwd fixpoint
check_codec fixpoint-1f1b-gpipe 1160 0 --pp-compress-fwd fixpoint --pp-schedule gpipe --micro-batches 2
check_codec tah 0 1672 --pp-compress-fwd tah --tile 16 --pp-compress-bwd fixpoint
run 2 "$T/warm" "$T/config4.json" --pp 2 --pp-compress-fwd tah --tile 16 --pp-warmup-epochs 1000 || fail "warm-up run"
# (Training's loss and gradient norm; validation is coded even in the warm-up, unless --pp-eval-uncompressed.)
echo -n "tah with every step in its warm-up vs 1 process: "; same_curve "$T/r1" "$T/warm" 20 "loss grad_norm" || fail "warm-up steps are not uncompressed"
run 2 "$T/warm2" "$T/config4.json" --pp 2 --pp-compress-fwd tah --tile 16 --pp-warmup-epochs 1000 --pp-eval-uncompressed || fail "warm-up run"
echo -n "... and with --pp-eval-uncompressed: "; same_curve "$T/r1" "$T/warm2" || fail "--pp-eval-uncompressed still codes validation"

# AQ-SGD's delta codecs: both ends of the link hold the same cache after every step (each
# checkpoint carries both: byte-equal), the messages are fixpoint codes of the difference, and
# a run stopped and resumed continues exactly (the caches are part of the checkpoint): the same
# weights, AdamW state and caches, byte for byte, as the run that never stopped.
for codec in delta delta-lowbits; do
  DA=(--pp 2 --pp-compress-fwd $codec --pp-compress-bwd fixpoint --steps 6 --save-every 1 --keep 10)
  run 2 "$T/$codec" "$T/config4.json" "${DA[@]}" || { tail -5 "$T/$codec.log"; fail "$codec run"; continue; }
  for c in "$T/$codec"/checkpoint-*; do
    cmp -s "$c/pp_cache-rank00000-sent.bin" "$c/pp_cache-rank00001-received.bin" || fail "$codec: the two ends' caches differ at ${c##*/}"
  done
  echo "$codec: the two ends' caches equal at all $(ls -d "$T/$codec"/checkpoint-* | wc -l) checkpoints"
  run 2 "$T/$codec-r" "$T/config4.json" "${DA[@]}" --stop-after 3 && run 2 "$T/$codec-r" "$T/config4.json" "${DA[@]}" --resume ||
    { tail -5 "$T/$codec-r.log"; fail "$codec stop and resume"; continue; }
  grep -q "delta caches" "$T/$codec-r.log" && fail "$codec: the resume did not read its caches"
  for f in model.safetensors train_state.bin pp_cache-rank00000-sent.bin pp_cache-rank00001-received.bin; do
    cmp -s "$T/$codec/checkpoint-000006/$f" "$T/$codec-r/checkpoint-000006/$f" || fail "$codec: $f differs after a stop and resume"
  done
  echo "$codec: stopped at step 3 and resumed = never stopped (weights, optimizer state and caches byte for byte)"
done

# Resume at another pipeline depth: stop a --pp 2 run at step 10, continue at --pp 4 and in one process.
run 2 "$T/s2" "$T/config4.json" --pp 2 --stop-after 10 || { tail -5 "$T/s2.log"; fail "stop-after run"; }
cp -r "$T/s2" "$T/s1"
run 4 "$T/s2" "$T/config4.json" --pp 4 --resume || { tail -5 "$T/s2.log"; fail "resume at --pp 4"; }
echo -n "--pp 2 to 10, then --pp 4: "; same_curve "$T/r1" "$T/s2" || fail "resume at --pp 4: curve differs"
run 1 "$T/s1" "$T/config4.json" --resume || { tail -5 "$T/s1.log"; fail "resume in one process"; }
echo -n "--pp 2 to 10, then 1 process: "; same_curve "$T/r1" "$T/s1" || fail "resume in one process: curve differs"
# The weights a --pp run writes are the model directory one process writes (to the curve's tolerance).
/usr/bin/python3 - "$T/r1/checkpoint-000020/model.safetensors" "$T/p2-1f1b/checkpoint-000020/model.safetensors" <<'PY' || fail "weights differ"
import json, struct, sys, numpy as np
def load(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
    return {k: np.frombuffer(b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]], dtype=np.float32)
            for k, v in h.items() if k != "__metadata__"}
a, b = load(sys.argv[1]), load(sys.argv[2])
assert a.keys() == b.keys(), (a.keys() ^ b.keys())
worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
print(f"--pp 2 checkpoint vs 1 process: {len(a)} tensors, largest difference {worst:.2e}")
sys.exit(0 if worst <= 1e-4 else 1)  # 20 AdamW steps at lr 3e-3 from sums in another order
PY

# A Chrome trace of a --pp 2 run: both ranks' forwards, backwards, messages.
run 2 "$T/tr" "$T/config4.json" --pp 2 --steps 3 --profile-trace "$T/trace.json" || fail "--profile-trace run"
/usr/bin/python3 - "$T/trace.json" <<'PY' || fail "trace"
import json, sys
ev = json.load(open(sys.argv[1]))["traceEvents"]
x = [e for e in ev if e["ph"] == "X"]
for tid in (0, 1):
    names = {e["name"].split()[0] for e in x if e["tid"] == tid}
    need = {"forward", "backward", "encode", "decode", "recv", "isend"}
    assert need <= names, (tid, need - names)
print(f"trace: {len(x)} events on ranks {sorted({e['tid'] for e in x})}")
PY

# Faults: each ends within seconds with one message.
E=("$LLMQ" -t 1 "${PT[@]}" --config "$T/config4.json" --steps 20 --save-every 10)
LLMQ_PP_FAULT=checksum:0:1 expect_job_error "pipeline stage 1: step 0 micro-batch 1: the activations from stage 0: whose payload checksum" \
  -- -np 2 -x LLMQ_PP_FAULT "${E[@]}" --out "$T/e1" --pp 2
LLMQ_PP_FAULT=length:1:0 expect_job_error "pipeline stage 0: step 0 micro-batch 0: the gradients from stage 1: of 8192 payload bytes (8188 received)" \
  -- -np 2 -x LLMQ_PP_FAULT "${E[@]}" --out "$T/e2" --pp 2
expect_job_error "disagree on the training options" -- -np 1 "${E[@]}" --out "$T/e3" --pp 2 : -np 1 "${E[@]}" --out "$T/e3" --pp 2 --pp-schedule gpipe
expect_job_error "does not divide the job's 2 ranks" -- -np 2 "${E[@]}" --out "$T/e4" --pp 4
expect_job_error "covers 3 blocks; the model has 4" -- -np 2 "${E[@]}" --out "$T/e5" --pp 2 --pp-split 2,1
expect_job_error "does not divide the 4 windows" -- -np 2 "${E[@]}" --out "$T/e6" --pp 2 --micro-batches 3
expect_job_error "fewer than the stages" -- -np 4 "$LLMQ" -t 1 "${PT[@]}" --config "$T/config.json" --steps 20 --out "$T/e7" --pp 4
expect_job_error "are for pipeline stages" -- -np 1 "${E[@]}" --out "$T/e9" --pp-split 4
cat > "$T/die.sh" <<SH
#!/usr/bin/env bash
if [ "\$OMPI_COMM_WORLD_RANK" = 1 ]; then ( sleep 3; kill -9 \$\$ ) & fi
exec $LLMQ -t 1 ${PT[*]} --config "$T/config4.json" --pp 2 --steps 100000 --out "$T/e8"
SH
chmod +x "$T/die.sh"
expect_job_error "exited on signal 9" -- -np 2 "$T/die.sh"

[ $fails -eq 0 ] || { echo "$fails failure(s)"; exit 1; }
echo "pipeline-parallel training: all cases passed"
