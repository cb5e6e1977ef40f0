#!/usr/bin/env bash
# Trains llmq's small reference model on real English text, end to end on this 2-core
# machine (about 45 minutes at the default steps): an 8,000-piece SentencePiece BPE
# tokenizer, token shards of four corpora (World English Bible, Moby-Dick, the Brown corpus,
# 233 State of the Union addresses), then a 6-layer dim-384 Llama (~15.6 M parameters).
# The result, runs/small/checkpoint-*, is the base for quantization quality work.
# usage: scripts/train_small.sh [steps, default 1200]     (env: BATCH, SEQ, LR)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-1200}
BATCH=${BATCH:-16}
SEQ=${SEQ:-256}
LR=${LR:-2e-3}
scripts/build >/dev/null
scripts/fetch_data >/dev/null
L=build/llmq
TOK=models/small-tokenizer
TEXT="data/text/web.txt data/text/moby_dick.txt data/text/brown.txt data/text/sotu.txt"
[ -f $TOK/tokenizer.model ] || $L tokenizer train --input $TEXT --vocab 8000 --type bpe --seed 1 --out $TOK 2>&1 | grep -v LOG
[ -f data/small/manifest.json ] || $L data prepare --tokenizer $TOK --input $TEXT --out data/small --val-fraction 0.01 --seed 1
[ -f models/small-init/config.json ] || $L init --preset small --tokenizer $TOK --out models/small-init --dtype f32 --seed 1
resume=""
[ -f runs/small/latest ] && resume="--resume"
$L train --model models/small-init --data data/small --out runs/small --overwrite --steps "$STEPS" --batch "$BATCH" --seq-len "$SEQ" \
  --lr "$LR" --warmup 100 --eval-every 100 --eval-batches 16 --save-every 100 --log-every 20 $resume --json
CK=runs/small/$(cat runs/small/latest)
echo "--- held-out (validation split) loss by step"
grep val_loss runs/small/metrics.jsonl | tail -5
echo "--- samples from $CK"
for p in "In the beginning" "Call me Ishmael." "The President said that" "It was a dark and stormy night"; do
  echo "> $p"
  $L generate -m "$CK" -p "$p" -n 60 --temperature 0.8 --top-p 0.95 --seed 7 2>/dev/null
done
