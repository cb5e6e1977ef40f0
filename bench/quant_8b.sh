#!/usr/bin/env bash
# Streaming quantization of a model bigger than comfort: a llama3-8b-shaped model with random
# bf16 weights (16 GB on disk; `llmq init --preset llama3-8b` makes it) on this 24 GB
# machine. One row per method: wall time and peak RSS (getrusage, which counts the mapped
# source pages still resident, so it is the honest figure). Goals (issue 6): RTN and HQQ
# <= 3 GB, GPTQ with 32x512 calibration tokens <= 6 GB.
# usage: bench/quant_8b.sh [MODEL] [methods...]   (default: rtn hqq gptq)
#   LAYERS=4 bench/quant_8b.sh models/llama3-8b-4l-bf16 gptq: the same shapes with 4 blocks
#   (peak memory is per block, so it is the full model's; wall time scales with the blocks)
set -euo pipefail
cd "$(dirname "$0")/.."
M=${1:-models/llama3-8b-bf16}
shift $(( $# > 0 ? 1 : 0 ))
methods=("$@")
[ ${#methods[@]} -gt 0 ] || methods=(rtn hqq gptq)
[ -d "$M" ] || build/llmq init --preset llama3-8b ${LAYERS:+--layers $LAYERS} --dtype bf16 \
  --tokenizer models/llama3-tokenizer --out "$M"
out=$(mktemp -d -p "$(dirname "$M")")
trap 'rm -rf "$out"' EXIT
printf "%-6s %-7s %-6s %10s %12s %10s\n" method scheme group "wall s" "peak RSS GB" "out GB"
for meth in "${methods[@]}"; do
  args=(--method "$meth" --scheme w4a16 --out "$out/q" --json)
  [ "$meth" = gptq ] && args+=(--calib data/text/web.txt --calib-samples 32 --calib-seq-len 512)
  j=$(build/llmq quantize -m "$M" "${args[@]}" 2>/dev/null | tail -1)
  /usr/bin/python3 - "$meth" "$j" <<'PY'
import json, sys
m, j = sys.argv[1], json.loads(sys.argv[2])
g = 64 if m == "hqq" else 128
print(f"{m:<6} {'w4a16':<7} {g:<6} {j['seconds']:10.1f} {j['peak_rss_bytes']/1e9:12.2f} {j['bytes_out']/1e9:10.2f}")
PY
  rm -rf "$out/q"
done
echo "summary: $M ($(du -sh "$M" | cut -f1) bf16), $(nproc) threads, OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
