#!/usr/bin/env bash
# Training tokens/s of two llmq builds side by side in one run (alternating, same data,
# same threads): the `small` preset over a 4,000-piece tokenizer of the web text, 2,048
# tokens per step at T 256, 512 and 1024 (B = 2048/T; the preset's context is 1024), measured over steps 4-6 of 6.
# usage: bench/train_ab.sh OLD_LLMQ [NEW_LLMQ=build/llmq] [rounds=2]   (say OPENBLAS_CORETYPE)
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?usage: bench/train_ab.sh OLD_LLMQ [NEW_LLMQ] [rounds]}
NEW=${2:-build/llmq}
rounds=${3:-2}
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
mkdir -p data/bench
[ -f data/bench/tok4k/tokenizer.model ] || $NEW tokenizer train --input data/text/web.txt --vocab 4000 --out data/bench/tok4k >/dev/null 2>&1
[ -f data/bench/web4k/manifest.json ] || $NEW data prepare --tokenizer data/bench/tok4k --input data/text/web.txt --out data/bench/web4k >/dev/null 2>&1
printf "%-6s %-6s %-8s %12s\n" round T build "tok/s"
declare -A sum
for r in $(seq "$rounds"); do
  for T in 256 512 1024; do
    for b in old new; do
      bin=$([ $b = old ] && echo "$OLD" || echo "$NEW")
      tps=$($bin train --preset small --data data/bench/web4k --out "$W/$b-$T-$r" --steps 6 --log-every 3 --save-every 0 \
            --eval-every 0 --sample-tokens 0 --batch $((2048 / T)) --seq-len $T --json 2>/dev/null \
            | /usr/bin/python3 -c 'import json,sys; print(round(json.load(sys.stdin)["tokens_per_s"]))')
      printf "%-6s %-6s %-8s %12s\n" "$r" "$T" "$b" "$tps"
      sum[$b-$T]=$(( ${sum[$b-$T]:-0} + tps ))
    done
  done
done
line="summary (mean tok/s new/old):"
for T in 256 512 1024; do
  line+=" T $T $(( sum[new-$T] / rounds ))/$(( sum[old-$T] / rounds )) = $(awk -v a=${sum[new-$T]} -v b=${sum[old-$T]} 'BEGIN {printf "%.2fx", a/b}');"
done
echo "$line"
