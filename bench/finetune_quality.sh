#!/usr/bin/env bash
# Fine-tuning on a domain the base never saw (issue 22): a small-preset base trained on the
# World English Bible, Moby-Dick and the Brown corpus; then, at the same step budget on 233
# State of the Union addresses, full fine-tuning, LoRA, DoRA, QLoRA (RTN-4 and HQQ-4 base)
# and QDoRA (HQQ-4 and HQQ-2 base). Prints the held-out addresses' loss and perplexity of each
# (the same 16 validation windows), the base before fine-tuning (float and each quantized
# base), trained values, tokens/s and peak RSS.
# usage: bench/finetune_quality.sh [base steps, default 600] [fine-tuning steps, default 150]
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_STEPS=${1:-600}
FT_STEPS=${2:-150}
L=build/llmq
TOK=models/ft-tokenizer
BASE_TEXT="data/text/web.txt data/text/moby_dick.txt data/text/brown.txt"
[ -f $TOK/tokenizer.model ] || $L tokenizer train --input $BASE_TEXT --vocab 8000 --type bpe --seed 1 --out $TOK 2>&1 | grep -v LOG
[ -f data/ft-base/manifest.json ] || $L data prepare --tokenizer $TOK --input $BASE_TEXT --out data/ft-base --val-fraction 0.01 --seed 1
[ -f data/ft-sotu/manifest.json ] || $L data prepare --tokenizer $TOK --input data/text/sotu.txt --out data/ft-sotu --val-fraction 0.05 --seed 1
[ -f models/ft-init/config.json ] || $L init --preset small --tokenizer $TOK --out models/ft-init --dtype f32 --seed 1
if [ ! -f runs/ft-base/latest ] || [ "$(cat runs/ft-base/latest)" != "$(printf 'checkpoint-%06d' "$BASE_STEPS")" ]; then
  $L train --model models/ft-init --data data/ft-base --out runs/ft-base --overwrite --steps "$BASE_STEPS" --batch 8 \
    --seq-len 256 --lr 2e-3 --warmup 50 --eval-every 100 --save-every "$BASE_STEPS" --log-every 50 --precision bf16 \
    --sample-tokens 0 --json > /dev/null
fi
BASE=runs/ft-base/$(cat runs/ft-base/latest)
common="--data data/ft-sotu --batch 8 --seq-len 256 --eval-every $FT_STEPS --eval-batches 16 \
  --save-every $FT_STEPS --log-every 25 --precision bf16 --json --overwrite"
ft="--steps $FT_STEPS --warmup 15"
R=runs/ft-quality
mkdir -p $R
printf "%-26s %10s %9s %11s %9s %10s\n" method "val loss" "val ppl" "trained" "tok/s" "peak RSS"
row() {  # name, json line
  /usr/bin/python3 -c '
import json, math, sys
j = json.loads(sys.argv[2])
print("%-26s %10.4f %9.2f %11d %9.0f %9.0fM" % (sys.argv[1], j["val_loss"], math.exp(j["val_loss"]), j["trained_params"],
      j["tokens_per_s"], j["peak_rss_bytes"] / 1e6))' "$1" "$2"
}
# Before fine-tuning: one step at a learning rate that moves nothing (a fresh adapter changes
# no bit), so the validation loss is the base's own on the new domain.
for q in none rtn4 hqq4 hqq2; do
  qb=""; [ $q = none ] || qb="--quantize-base $q"
  row "base ($q), no fine-tuning" "$($L finetune -m $BASE $qb $common --steps 1 --warmup 0 --lr 1e-30 --out $R/base-$q 2>/dev/null)"
done
row "full fine-tuning" "$($L train --model $BASE $common $ft --lr 5e-4 --out $R/full --sample-tokens 0 2>/dev/null)"
ad="--rank 16 --alpha 32 --lr 2e-3"
row "LoRA r16" "$($L finetune -m $BASE $ad $common $ft --out $R/lora 2>/dev/null)"
row "DoRA r16" "$($L finetune -m $BASE $ad --adapter dora $common $ft --out $R/dora 2>/dev/null)"
row "QLoRA r16, RTN-4 base" "$($L finetune -m $BASE $ad --quantize-base rtn4 $common $ft --out $R/qlora-rtn4 2>/dev/null)"
row "QLoRA r16, HQQ-4 base" "$($L finetune -m $BASE $ad --quantize-base hqq4 $common $ft --out $R/qlora-hqq4 2>/dev/null)"
row "QDoRA r16, HQQ-4 base" "$($L finetune -m $BASE $ad --adapter dora --quantize-base hqq4 $common $ft --out $R/qdora-hqq4 2>/dev/null)"
row "QDoRA r16, HQQ-2 base" "$($L finetune -m $BASE $ad --adapter dora --quantize-base hqq2 $common $ft --out $R/qdora-hqq2 2>/dev/null)"
echo "summary: held-out State of the Union perplexity after $FT_STEPS steps (B 8 x T 256) from a $BASE_STEPS-step base; see rows"
