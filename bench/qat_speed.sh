#!/usr/bin/env bash
# Quantization-aware training speed (issue 23), two parts:
#  1. a QAT step against a plain training step of the same model and batch (runs/ft-base, B 4 x
#     T 256, interleaved rounds): `llmq train`, `llmq qat --scheme w4a8kv4` (fake quantizers and
#     the teacher's forward + KL, LLM-QAT), and the same without a teacher (--kd-weight 0: the
#     quantizers' own cost);
#  2. decode of what QAT produces beside the PTQ schemes, llama3.2-1b shape (random weights):
#     w4a16 (RTN, group 128), w8a8 (RTN), w4a8 (`quantize --method qat`) with its int4 KV cache
#     and with an f32 one, prompt 512, 64 tokens decoded, batch 1.
# usage: bench/qat_speed.sh [rounds, default 2] [all|train|decode]
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-2}; PART=${2:-all}   # PART: all, train or decode
L=build/llmq; PY=/usr/bin/python3
M=runs/ft-base; [ -f "$M/latest" ] && M="$M/$(cat "$M/latest")"
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
if [ "$PART" != decode ]; then
echo "== training step, $M, B 4 x T 256, 12 steps a run (tok/s of the last 6)"
printf "%-6s %-22s %10s\n" round run "tok/s"
declare -A sum
for r in $(seq 1 "$R"); do
  for run in train qat qat-nokd; do
    case $run in
      train) cmd=(train --sample-tokens 0) ;;
      qat) cmd=(qat --scheme w4a8kv4) ;;
      qat-nokd) cmd=(qat --scheme w4a8kv4 --kd-weight 0) ;;
    esac
    rm -rf "$W/run"
    $L "${cmd[@]}" -m "$M" --data data/ft-base --out "$W/run" --steps 12 --batch 4 --seq-len 256 --lr 1e-5 --warmup 0 \
      --eval-every 0 --save-every 1000 --log-every 6 > /dev/null 2>&1
    tps=$($PY -c 'import json,sys; print("%.0f" % [json.loads(l) for l in open(sys.argv[1])][-1]["tokens_per_s"])' "$W/run/metrics.jsonl")
    printf "%-6s %-22s %10s\n" "$r" "$run" "$tps"
    sum[$run]=$($PY -c "print(${sum[$run]:-0} + $tps)")
  done
done
train=$($PY -c "print(${sum[train]} / $R)"); qat=$($PY -c "print(${sum[qat]} / $R)"); nokd=$($PY -c "print(${sum[qat-nokd]} / $R)")
echo "summary: a QAT step (w4a8kv4, teacher + KL) runs at $($PY -c "print('%.2f' % ($qat / $train))")x a plain training step's tokens/s ($($PY -c "print('%.0f' % $qat)") vs $($PY -c "print('%.0f' % $train)")), without the teacher $($PY -c "print('%.2f' % ($nokd / $train))")x"
fi
[ "$PART" = train ] && exit 0

echo "== decode, llama3.2-1b shape (random f16 weights quantized; embeddings and lm_head f16 in every row), prompt 512, gen 64, batch 1"
F=models/llama3.2-1b-f16
[ -f $F/config.json ] || $L init --preset llama3.2-1b --dtype f16 --out $F --seed 0 > /dev/null
$L quantize -m $F --out $W/w4a16 --scheme w4a16 --keep embed,lm_head > /dev/null 2>&1
$L quantize -m $F --out $W/w8a8 --scheme w8a8 --keep embed,lm_head > /dev/null 2>&1
$L quantize -m $F --out $W/w4a8 --method qat --scheme w4a8 --kv-cache int4 > /dev/null 2>&1
$L bench -m $W/w4a16 -m $W/w8a8 -m $W/w4a8 --prompt 512 --gen 64 --reps 2 --kv-cache auto
$L bench -m $W/w4a8 --prompt 512 --gen 64 --reps 2 --kv-cache f32
