#!/usr/bin/env bash
# The core engine's speed against the machine's floors, in one run:
#   decode tok/s vs (bytes of weights read per token / measured read bandwidth),
#   prefill GFLOP/s vs measured OpenBLAS sgemm peak,
# on llama3.2-1b with random bf16 weights (created in models/ on first use, 2.5 GB).
# Rounds alternate bandwidth and decode measurements so both see the same host load.
# usage: bench/core.sh [rounds, default 3]    (respects OPENBLAS_CORETYPE; say which)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
B=build
M=models/llama3.2-1b-bf16
[ -f $M/config.json ] || $B/llmq init --preset llama3.2-1b --dtype bf16 --out $M --seed 0
# Bytes read per decoded token: every weight once (tied embedding read once, as lm_head).
bytes=$(stat -c %s $M/model.safetensors)
sg=$($B/bench/bench_sgemm | awk '/summary/ {print $4}')
printf "%-6s %10s %12s %10s %14s %10s %12s\n" round "read GB/s" "floor tok/s" "decode" "% of floor" "prefill" "% sgemm"
sum=0
for r in $(seq 1 "$rounds"); do
  bw=$($B/bench/bench_membw 1024 | awk '/summary/ {print $6}')
  js=$($B/llmq bench -m $M --prompt 512 --gen 64 --json)
  dec=$(sed -E 's/.*"decode_tok_s":([0-9.e+-]+).*/\1/' <<<"$js")
  gf=$(sed -E 's/.*"prefill_gflops":([0-9.e+-]+).*/\1/' <<<"$js")
  floor=$(awk -v b="$bytes" -v bw="$bw" 'BEGIN {print bw*1e9/b}')
  pct=$(awk -v d="$dec" -v f="$floor" 'BEGIN {printf "%.1f", 100*d/f}')
  pgf=$(awk -v g="$gf" -v s="$sg" 'BEGIN {printf "%.1f", 100*g/s}')
  printf "%-6s %10.1f %12.1f %10.2f %14s %10.1f %12s\n" "$r" "$bw" "$floor" "$dec" "$pct" "$gf" "$pgf"
  sum=$(awk -v a="$sum" -v p="$pct" 'BEGIN {print a+p}')
done
echo "summary: decode at $(awk -v s="$sum" -v n="$rounds" 'BEGIN {printf "%.1f", s/n}')% of the bandwidth floor (mean of $rounds rounds), sgemm peak $sg GFLOP/s, OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}, $(nproc) cores"
