#!/usr/bin/env bash
# Data-free data generation (`llmq data generate`, issue 23): tokens/s with the samples of a
# batch sharing each forward against one sequence at a time, same model, samples and seed
# (the files are byte-identical: checked), interleaved rounds.
# usage: bench/datagen.sh [model, default runs/ft-base] [samples, default 32] [seq-len, default 128] [rounds, default 2]
set -euo pipefail
cd "$(dirname "$0")/.."
M=${1:-runs/ft-base}; N=${2:-32}; T=${3:-128}; R=${4:-2}
L=build/llmq
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
printf "%-6s %-8s %10s %10s\n" round batch "tok/s" "seconds"
declare -A sum
for r in $(seq 1 "$R"); do
  for b in 1 16; do
    rm -f "$W/b$b.jsonl"
    j=$($L data generate -m "$M" --out "$W/b$b.jsonl" --samples "$N" --seq-len "$T" --batch "$b" --json 2>/dev/null)
    tps=$(/usr/bin/python3 -c 'import json,sys; print("%.1f" % json.loads(sys.argv[1])["tokens_per_s"])' "$j")
    secs=$(/usr/bin/python3 -c 'import json,sys; print("%.1f" % json.loads(sys.argv[1])["seconds"])' "$j")
    printf "%-6s %-8s %10s %10s\n" "$r" "$b" "$tps" "$secs"
    sum[$b]=$(/usr/bin/python3 -c "print(${sum[$b]:-0} + $tps)")
  done
  cmp -s "$W/b1.jsonl" "$W/b16.jsonl" || { echo "the batched file differs from the one-at-a-time file"; exit 1; }
done
echo "summary: batch 16 $(/usr/bin/python3 -c "print('%.0f' % (${sum[16]} / $R))") tok/s vs one sequence at a time $(/usr/bin/python3 -c "print('%.0f' % (${sum[1]} / $R))") tok/s: $(/usr/bin/python3 -c "print('%.2f' % (${sum[16]} / ${sum[1]}))")x ($N samples x $T tokens, $M)"
