#!/usr/bin/env bash
# GPTQ speed side by side: llmq (bench/gptq.cpp) and the same algorithm in PyTorch
# (bench/gptq_peer.py, as the authors' reference runs it), same shapes and threads,
# alternating. Default: one 4096x4096 layer, 128 x 2048 calibration tokens, 4-bit g128.
# usage: bench/gptq.sh [rounds, default 1] [M K samples seq_len]   (say OPENBLAS_CORETYPE)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-1}
M=${2:-4096}; K=${3:-4096}; S=${4:-128}; T=${5:-2048}
threads=$(nproc)
printf "%-6s %-8s %10s %10s %10s\n" round engine "hessian s" "quant s" "total s"
sum_l=0; sum_p=0
for r in $(seq 1 "$rounds"); do
  read -r hl ql < <(build/bench/bench_gptq $M $K $S $T 4 128 | awk '$1 == "llmq" {print $5, $6}')
  js=$(/usr/bin/python3 bench/gptq_peer.py $M $K $S $T 4 128 $threads)
  hp=$(sed -E 's/.*"hessian_s": ([0-9.e+-]+).*/\1/' <<<"$js"); qp=$(sed -E 's/.*"quant_s": ([0-9.e+-]+).*/\1/' <<<"$js")
  printf "%-6s %-8s %10.2f %10.2f %10.2f\n" "$r" llmq "$hl" "$ql" "$(awk -v a="$hl" -v b="$ql" 'BEGIN {print a+b}')"
  printf "%-6s %-8s %10.2f %10.2f %10.2f\n" "$r" pytorch "$hp" "$qp" "$(awk -v a="$hp" -v b="$qp" 'BEGIN {print a+b}')"
  sum_l=$(awk -v s="$sum_l" -v a="$hl" -v b="$ql" 'BEGIN {print s+a+b}')
  sum_p=$(awk -v s="$sum_p" -v a="$hp" -v b="$qp" 'BEGIN {print s+a+b}')
done
echo "summary: gptq ${M}x${K}, $((S*T)) tokens, 4-bit g128: llmq $(awk -v a="$sum_l" -v n="$rounds" 'BEGIN {printf "%.1f", a/n}') s, PyTorch $(awk -v a="$sum_p" -v n="$rounds" 'BEGIN {printf "%.1f", a/n}') s: $(awk -v a="$sum_l" -v b="$sum_p" 'BEGIN {printf "%.2f", b/a}')x faster ($threads threads, OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset})"
