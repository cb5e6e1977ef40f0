#!/usr/bin/env bash
# LLM-QAT's comparison on llmq's own trained model (issue 23): for W4A8KV4, W4A8KV8, W4A16KV16 and
# W8A8KV8, the float teacher against RTN PTQ, GPTQ PTQ, QAT on text the teacher generated itself
# (`llmq data generate`, LLM-QAT's recipe) and QAT on the real training text, at the same token
# budget: perplexity ratio, mean KL divergence and top-1 agreement to the float model on held-out
# text, and the two task accuracies (scripts/make_tasks: held-out cloze and final-word).
# PTQ rows are per-channel symmetric (QAT's weight grid), lm_head in float like QAT's, with the
# scheme's activations and a dynamic KV cache of the same bits. Resumable: finished steps are
# kept in the work directory and skipped.
# usage: bench/qat_table.sh [teacher, default runs/ft-base] [steps, default 100] [work dir, default runs/qat-table]
set -euo pipefail
cd "$(dirname "$0")/.."
M=${1:-runs/ft-base}; STEPS=${2:-100}; W=${3:-runs/qat-table}
[ -d "$M/latest" ] || [ -f "$M/config.json" ] || [ -f "$M/latest" ] || { echo "no model at $M"; exit 1; }
[ -f "$M/latest" ] && M="$M/$(cat "$M/latest")"
L=build/llmq; PY=/usr/bin/python3
B=4; T=256; LR=1e-4
REAL=data/ft-base           # the teacher's training text; its val split is the held-out text
TASKS="data/tasks/cloze.jsonl data/tasks/final-word.jsonl"
mkdir -p "$W"
RES="$W/results.jsonl"
touch "$RES"

# Self-generated data: enough tokens for STEPS x B windows of T without repeating any. The
# teacher ends most samples with EOS after ~25 tokens (it was trained on line documents), as
# LLM-QAT's generate() would; data prepare packs the samples into one token stream.
if [ ! -f "$W/data-gen/manifest.json" ]; then
  $L data generate -m "$M" --out "$W/gen.jsonl" --samples $((STEPS * B * T / 18)) --seq-len $((T + 1)) --batch 16 --seed 1
  $L data prepare --tokenizer "$M" --input "$W/gen.jsonl" --out "$W/data-gen" --val-fraction 0 --overwrite
fi

evaluate() {  # name scheme model kv
  local name=$1 scheme=$2 q=$3 kv=$4
  grep -q "\"name\": \"$name\", \"scheme\": \"$scheme\"" "$RES" && return
  local cmp tasks
  cmp=$($L eval compare -m "$M" -q "$q" --data "$REAL" --max-tokens 16384 --kv-cache "$kv" --json 2>/dev/null | tail -1)
  tasks=$($L eval tasks -m "$q" --tasks $TASKS --kv-cache "$kv" --json 2>/dev/null | tail -1)
  $PY - "$name" "$scheme" "$cmp" "$tasks" >> "$RES" <<'EOF'
import json, sys
name, scheme, cmp, tasks = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
t = {x["task"]: x for x in tasks}
row = {"name": name, "scheme": scheme, "ppl_ratio": cmp["ppl_ratio"], "kld": cmp["kld_mean"],
       "top1": cmp["top1_agreement"], "ppl": cmp["ppl_quant"], "ppl_base": cmp["ppl_base"],
       "cloze_acc_norm": t["cloze"]["acc_norm"], "final_word_em": t["final-word"]["exact_match"]}
print(json.dumps(row).replace('", "', '", "'))
EOF
}

evaluate float - "$M" f32
for s in w4a8kv4 w4a8kv8 w4a16kv16 w8a8kv8; do
  w=${s%kv*}; kvb=${s#*kv}
  case $w in w4a8) qs=w4a8 ;; w4a16) qs=w4a16 ;; w8a8) qs=w8a8 ;; esac
  kv=$([ "$kvb" = 16 ] && echo f32 || echo "int$kvb")
  [ -f "$W/rtn-$qs/config.json" ] || $L quantize -m "$M" --out "$W/rtn-$qs" --scheme $qs --group 0 --sym --keep embed,lm_head --overwrite >/dev/null
  [ -f "$W/gptq-$qs/config.json" ] || $L quantize -m "$M" --out "$W/gptq-$qs" --method gptq --calib "$REAL" --calib-samples 64 \
    --calib-seq-len $T --scheme $qs --group 0 --sym --overwrite >/dev/null
  evaluate rtn $s "$W/rtn-$qs" $kv
  evaluate gptq $s "$W/gptq-$qs" $kv
  for src in gen real; do
    d=$([ $src = gen ] && echo "$W/data-gen" || echo "$REAL")
    if [ ! -f "$W/qat-$src-$s/quantized/config.json" ]; then
      rm -rf "$W/qat-$src-$s"
      $L qat -m "$M" --data "$d" --out "$W/qat-$src-$s" --scheme $s --steps "$STEPS" --batch $B --seq-len $T --lr $LR \
        --warmup $((STEPS / 10)) --eval-every "$STEPS" --save-every "$STEPS" --log-every 25 --json > "$W/qat-$src-$s.json"
    fi
    evaluate "qat-$src" $s "$W/qat-$src-$s/quantized" auto   # the model's own cache: int4/int8 as trained
  done
done

$PY - "$RES" "$STEPS" "$B" "$T" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
steps, B, T = map(int, sys.argv[2:5])
print(f"{'scheme':<10} {'method':<9} {'ppl':>8} {'ppl ratio':>9} {'KLD':>8} {'top-1':>7} {'cloze':>7} {'final':>7}")
for r in rows:
    print(f"{r['scheme']:<10} {r['name']:<9} {r['ppl']:>8.2f} {r['ppl_ratio']:>9.4f} {r['kld']:>8.5f} {r['top1']:>7.4f} "
          f"{r['cloze_acc_norm']:>7.3f} {r['final_word_em']:>7.3f}")
by = {(r["scheme"], r["name"]): r for r in rows}
if ("w4a8kv4", "rtn") in by and ("w4a8kv4", "qat-gen") in by:
    a, g, q = by[("w4a8kv4", "rtn")], by[("w4a8kv4", "gptq")], by[("w4a8kv4", "qat-gen")]
    print(f"summary: W4A8KV4 KLD to the float model: RTN {a['kld']:.5f}, GPTQ {g['kld']:.5f}, QAT on self-generated "
          f"data {q['kld']:.5f} ({a['kld'] / q['kld']:.2f}x lower than RTN), {steps} steps x {B} x {T} tokens")
EOF
