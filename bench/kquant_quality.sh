#!/usr/bin/env bash
# k-quant quality (issue 27): a model with the small preset's recipe but k-quant-sized widths
# (dim 256, ffn 768, 6 blocks: every row whole super-blocks; the small preset's 384 is not),
# trained on the ft-base corpus (bench/finetune_quality.sh's tokenizer and shards), then:
#  1. each GGUF type llmq writes (q2_k, q3_k_m, q4_k_m, q5_k_m, q6_k, q8_0, q4_0) and llmq's
#     own schemes (w8a16, w4a16 g128/g32 asym), scored against the float model by
#     `llmq eval compare` on held-out tokens: bits per weight, perplexity ratio, KLD, top-1;
#  2. the same types written by llama.cpp's quantizer (llama-quantize, built by
#     bench/llama_server.sh) from an f16 export, scored the same way, and each file's
#     perplexity from llmq and from llama.cpp (node-llama-cpp) on the same tokens.
# usage: bench/kquant_quality.sh [train steps, default 400]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-400}
L=build/llmq
TOK=models/ft-tokenizer
[ -f data/ft-base/manifest.json ] || { echo "run bench/finetune_quality.sh first (tokenizer and shards)"; exit 1; }
bench/llama_server.sh > /dev/null
LQ=data/llamacpp/build/bin/llama-quantize
W=models/kq-small
R=runs/kq-small
if [ ! -f $R/latest ]; then
  $L init --preset small --tokenizer $TOK --out $W-init --dtype f32 --seed 1 --overwrite > /dev/null 2>&1
  /usr/bin/python3 - $W-init/config.json <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c.update(hidden_size=256, intermediate_size=768, num_attention_heads=4, num_key_value_heads=2, head_dim=64)
json.dump(c, open(sys.argv[1] + ".k", "w"))
PY
  $L init --config $W-init/config.json.k --tokenizer $TOK --out $W-init --dtype f32 --seed 1 --overwrite > /dev/null 2>&1
  $L train --model $W-init --data data/ft-base --out $R --overwrite --steps "$STEPS" --batch 8 --seq-len 256 --lr 2e-3 \
    --warmup 40 --eval-every 0 --save-every "$STEPS" --log-every 50 --precision bf16 --sample-tokens 0 --json > /dev/null
fi
BASE=$R/$(cat $R/latest)
EV="--data data/ft-base --max-tokens 16384 --ctx 256"
row() {  # name, file/dir
  /usr/bin/python3 - "$1" "$($L eval compare -m $BASE -q "$2" $EV --json 2>/dev/null)" "$($L info "$2" --json 2>/dev/null)" <<'PY'
import json, sys
j, info = json.loads(sys.argv[2]), json.loads(sys.argv[3])
print("| %s | %.3f | %.2f | %.4f | %.5f | %.4f | %.2f%% |" % (sys.argv[1], info["bits_per_weight"], j["ppl_quant"], j["ppl_ratio"],
      j["kld_mean"], j["kld_p99"], 100 * j["top1_agreement"]))
PY
}
echo "base $BASE: $($L eval ppl -m $BASE $EV --json | /usr/bin/python3 -c 'import json,sys; print("perplexity %.3f" % json.load(sys.stdin)["ppl"])')"
echo "| file | bits/weight (all matrices) | perplexity | ratio | mean KLD | KLD p99 | top-1 |"
echo "|---|---|---|---|---|---|---|"
for ty in q2_k q3_k_m q4_k_m q5_k_m q6_k q4_0 q8_0; do
  [ -f $W.$ty.gguf ] || $L export -m $BASE --type $ty --out $W.$ty.gguf > /dev/null 2>&1
  row "llmq $ty" $W.$ty.gguf
done
for s in "w8a16" "w4a16 --group 128" "w4a16 --group 32"; do
  d=$W-$(tr -d ' -' <<<"$s")
  [ -f $d/config.json ] || $L quantize -m $BASE --scheme $s --out $d > /dev/null 2>&1
  row "llmq $s (asym)" $d
done
[ -f $W.f16.gguf ] || $L export -m $BASE --type f16 --out $W.f16.gguf > /dev/null 2>&1
for ty in Q2_K Q3_K_M Q4_K_M Q5_K_M Q6_K; do
  g=$W.llamacpp-$ty.gguf
  [ -f $g ] || $LQ $W.f16.gguf $g $ty 2 > /dev/null 2>&1
  row "llama.cpp $ty" $g
done
# llmq's perplexity on llama.cpp's own files against llama.cpp's, the same 2048 tokens.
DRV="node tests/llamacpp/llamacpp.mjs $PWD/data/llamacpp/node_modules"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
sed -n '3000,3200p' data/text/web.txt | $L tokenizer encode --tokenizer $TOK | tr '\n' ' ' | cut -d' ' -f1-2048 > $tmp/val.txt
echo
echo "| llama.cpp's file | llmq perplexity | llama.cpp perplexity | ratio |"
echo "|---|---|---|---|"
for ty in Q2_K Q3_K_M Q4_K_M Q5_K_M Q6_K; do
  g=$W.llamacpp-$ty.gguf
  a=$($L eval ppl -m $g --tokens $tmp/val.txt --ctx 256 --json 2>/dev/null | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["ppl"])')
  b=$($DRV $g nll $tmp/val.txt 256 2 | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["ppl"])')
  /usr/bin/python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print('| %s | %.4f | %.4f | %.5f |' % (sys.argv[3], a, b, a/b))" "$a" "$b" "$ty"
done
