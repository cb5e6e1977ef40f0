#!/usr/bin/env bash
# llmq merge on a quantized base (issue 22): a QLoRA adapter trained on an RTN-4 base is folded
# into the weights and the result quantized again; the report's perplexities are those
# `llmq eval ppl` gives for the base, the base with the adapter unmerged (--adapter) and the
# merged model, each measured separately here; merged without re-quantization (f32) the model
# gives the perplexity of the dequantized base with the adapter applied unmerged.
# usage: tests/cli/merge.sh LLMQ
set -euo pipefail
LLMQ=$(realpath "$1")
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails+1)); }
head -c 150000 "$ROOT/data/text/web.txt" > "$T/text.txt"
"$LLMQ" data prepare --tokenizer "$ROOT/models/llama3-tokenizer" --input "$T/text.txt" --out "$T/data" \
  --val-fraction 0.05 >/dev/null 2>&1 || { echo "FAIL: data prepare"; exit 1; }
cat > "$T/config.json" <<'JSON'
{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
 "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128256, "max_position_embeddings": 128,
 "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": true,
 "bos_token_id": 128000, "eos_token_id": 128001}
JSON
"$LLMQ" init --config "$T/config.json" --out "$T/base" --dtype f32 --seed 5 >/dev/null 2>&1 || { echo "FAIL: init"; exit 1; }
cp "$ROOT"/models/llama3-tokenizer/tokenizer*.json "$T/base/" 2>/dev/null || true
"$LLMQ" quantize -m "$T/base" --method rtn --group 32 --out "$T/q" >/dev/null 2>&1 || { echo "FAIL: quantize"; exit 1; }
"$LLMQ" -t 2 finetune -m "$T/q" --data "$T/data" --out "$T/ft" --rank 8 --steps 30 --batch 4 --seq-len 64 --lr 1e-2 \
  --warmup 2 --eval-every 0 --json >/dev/null 2>&1 || { echo "FAIL: finetune"; exit 1; }
EV=(--data "$T/data" --max-tokens 1024 --ctx 64)
"$LLMQ" merge -m "$T/q" --adapter "$T/ft" --out "$T/mq" "${EV[@]}" --json > "$T/mq.json" 2>"$T/mq.err" ||
  { cat "$T/mq.err"; fail "merge (re-quantized)"; }
"$LLMQ" merge -m "$T/q" --adapter "$T/ft" --out "$T/mf" --requantize none --dtype f32 "${EV[@]}" --json > "$T/mf.json" \
  2>"$T/mf.err" || { cat "$T/mf.err"; fail "merge (float)"; }
# The base dequantized to f32 (an adapter of lr 1e-30, far below f32 rounding of the weights,
# merged without re-quantization): the float merge must equal the adapter applied unmerged on
# it, both in f32 kernels (the quantized base's own kernels round differently).
"$LLMQ" -t 2 finetune -m "$T/q" --data "$T/data" --out "$T/ft0" --rank 8 --steps 1 --batch 4 --seq-len 64 --lr 1e-30 \
  --warmup 0 --eval-every 0 >/dev/null 2>&1 || fail "finetune (null adapter)"
"$LLMQ" merge -m "$T/q" --adapter "$T/ft0" --out "$T/deq" --requantize none --dtype f32 >/dev/null 2>&1 || fail "merge (null adapter)"
ppl() { "$LLMQ" eval ppl "$@" "${EV[@]}" --json 2>/dev/null | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["ppl"])'; }
/usr/bin/python3 - "$T/mq.json" "$T/mf.json" "$(ppl -m "$T/q")" "$(ppl -m "$T/q" --adapter "$T/ft")" "$(ppl -m "$T/mq")" \
  "$(ppl -m "$T/mf")" "$T/mq/config.json" "$(ppl -m "$T/deq" --adapter "$T/ft")" <<'PY' || fail "merge report"
import json, sys
mq, mf = (json.load(open(f))["report"] for f in sys.argv[1:3])
base, unmerged, merged_q, merged_f = map(float, sys.argv[3:7])
cfg = json.load(open(sys.argv[7]))
ok = True
def check(what, cond):
    global ok
    print(("ok: " if cond else "FAIL: ") + what)
    ok = ok and cond
# The same engine on the same windows: equal up to the printing of the figures (1e-9 relative).
near = lambda a, b: abs(a - b) <= 1e-9 * abs(b)
check(f"report's base ppl {mq['ppl_base']:.6f} = eval ppl {base:.6f}", near(mq["ppl_base"], base))
check(f"report's unmerged ppl {mq['ppl_unmerged']:.6f} = eval ppl --adapter {unmerged:.6f}", near(mq["ppl_unmerged"], unmerged))
check(f"report's merged ppl {mq['ppl_merged']:.6f} = eval ppl of the output {merged_q:.6f}", near(mq["ppl_merged"], merged_q))
check(f"float merge: report's merged ppl {mf['ppl_merged']:.6f} = eval ppl {merged_f:.6f}", near(mf["ppl_merged"], merged_f))
check(f"the adapter changed the model (KL to the base {mq['kld_unmerged_vs_base']:.4f} nats > 0.01)", mq["kld_unmerged_vs_base"] > 0.01)
check("the output is quantized again (quantization_config)", "quantization_config" in cfg)
# f32 merge: W + s*B*A against W x + s*B*(A x) on the dequantized base, both f32: the logits
# differ by f32 rounding (~1e-6 relative), the mean NLL by about as much, so the perplexities
# agree within 1e-5 relative; a wrong scale or a missed linear moves them by percents here.
deq_unmerged = float(sys.argv[8])
check(f"float merge: ppl {merged_f:.6f} = the dequantized base with the adapter unmerged {deq_unmerged:.6f} (1e-5)",
      abs(merged_f - deq_unmerged) <= 1e-5 * deq_unmerged)
# Against the quantized base's own kernels (what the report compares) the float model differs
# by those kernels' rounding only: a small KL next to the adapter's effect.
check(f"float merge: KL(unmerged || merged) {mf['kld_unmerged_vs_merged']:.2e} < 1% of the effect",
      mf["kld_unmerged_vs_merged"] < 0.01 * mf["kld_unmerged_vs_base"])
# Re-quantized: the merged weights move off the base's 4-bit grid and are rounded again, which
# costs some of the effect; it must keep the larger part (measured 0.999 here).
check(f"re-quantized: keeps {mq['effect_kept']:.3f} of the effect (> 0.5)", mq["effect_kept"] > 0.5)
sys.exit(0 if ok else 1)
PY
[ $fails -eq 0 ] || { echo "$fails failure(s)"; exit 1; }
echo "merge: all cases passed"
