# Shared by the mpirun tests: sourced with LLMQ, ROOT and T set. Makes a small model config
# (Llama 3 vocabulary, tied embeddings) and token shards from the fetched corpus, and
# same_curve A B, which compares two runs' metrics.jsonl, and expect_job_error (a job that must fail fast).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
fails=0
fail() { echo "FAIL: $*"; fails=$((fails+1)); }
head -c 200000 "$ROOT/data/text/web.txt" > "$T/text.txt"
"$LLMQ" data prepare --tokenizer "$ROOT/models/llama3-tokenizer" --input "$T/text.txt" --out "$T/data" \
  --val-fraction 0.05 >/dev/null 2>&1
cat > "$T/config.json" <<'JSON'
{"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
 "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128256, "max_position_embeddings": 128,
 "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": true,
 "bos_token_id": 128000, "eos_token_id": 128001}
JSON
TRAIN=(train --config "$T/config.json" --data "$T/data" --seq-len 32 --warmup 2
       --log-every 1 --eval-every 10 --eval-batches 2 --sample-tokens 0 --save-every 10)  # + --steps, --batch, --lr
same_curve() {  # same_curve A B [STEPS] [KEYS]: every logged loss, val loss and grad norm (or KEYS) within 1e-5 relative
  /usr/bin/python3 - "$1/metrics.jsonl" "$2/metrics.jsonl" "${3:-20}" "${4:-loss val_loss grad_norm}" <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
n = int(sys.argv[3])
keys = sys.argv[4].split()
assert len(a) == len(b) == n, (len(a), len(b))
worst = 0.0
for x, y in zip(a, b):
    for k in keys:
        if k in x:
            worst = max(worst, abs(x[k] - y[k]) / abs(x[k]))
print(f"max relative difference of {', '.join(keys)}: {worst:.2e}")
sys.exit(0 if worst <= 1e-5 else 1)
PY
}
# A job that must fail: within 30 s, its output holding NEEDLE (one message, no hang).
expect_job_error() {  # expect_job_error NEEDLE -- mpirun args...
  local needle=$1; shift 2
  local t0=$SECONDS
  if timeout 60 mpirun "$@" >"$T/err.log" 2>&1; then fail "expected an error: $*"; return; fi
  grep -q -- "$needle" "$T/err.log" || { fail "message lacks '$needle': $*"; tail -5 "$T/err.log"; return; }
  [ $((SECONDS - t0)) -lt 30 ] || fail "took $((SECONDS - t0)) s: $*"
  echo "ok: $needle ($((SECONDS - t0)) s)"
}
