#!/usr/bin/env bash
# The method table of docs/quantization.md: each method x scheme x group on the trained small
# model, scored against the float model on held-out text it never saw (the val split of
# data/small), with quantization time and peak memory. Calibrated methods draw their windows
# from the train split. Every row uses --keep embed,lm_head, so methods differ only in how
# they quantize the blocks' linears.
# usage: bench/quant_methods.sh [MODEL] [DATA] [rows...]   rows like gptq:w4a16:128 (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
M=${1:-runs/small/checkpoint-000600}
D=${2:-data/small}
shift $(( $# > 2 ? 2 : $# ))
rows=("$@")
[ ${#rows[@]} -gt 0 ] || rows=(rtn:w4a16:128 hqq:w4a16:128 gptq:w4a16:128 awq:w4a16:128
  rtn:w3a16:128 hqq:w3a16:128 gptq:w3a16:128 awq:w3a16:128
  rtn:w4a16:64 hqq:w4a16:64 rtn:w8a8:0 smoothquant:w8a8:0)
CAL="--calib $D --calib-samples ${CALIB_SAMPLES:-32} --calib-seq-len ${CALIB_SEQ:-512}"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "| method | scheme | group | perplexity | ratio | mean KLD | top-1 | quantize s | peak RSS MB |"
echo "|---|---|---|---|---|---|---|---|---|"
for r in "${rows[@]}"; do
  IFS=: read -r meth scheme group <<<"$r"
  args=(--method "$meth" --scheme "$scheme" --keep embed,lm_head --out "$out/q" --json)
  [ "$group" != 0 ] && args+=(--group "$group")
  case $meth in gptq|awq|smoothquant) args+=($CAL) ;; esac
  q=$(build/llmq quantize -m "$M" "${args[@]}" 2>/dev/null | tail -1)
  e=$(build/llmq eval compare -m "$M" -q "$out/q" --data "$D" --max-tokens 32768 --json 2>/dev/null)
  /usr/bin/python3 - "$meth" "$scheme" "$group" "$q" "$e" <<'PY'
import json, sys
m, s, g, q, e = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), json.loads(sys.argv[5])
print(f"| {m} | {s} | {g if g != '0' else 'channel'} | {e['ppl_quant']:.3f} | {e['ppl_ratio']:.5f} | {e['kld_mean']:.6f} | "
      f"{100*e['top1_agreement']:.2f}% | {q['seconds']:.1f} | {q['peak_rss_bytes']/1e6:.0f} |")
PY
done
echo "summary: $(date -u +%F), model $M, eval on the first 32,768 tokens of $D's val split, calibration ${CALIB_SAMPLES:-32}x${CALIB_SEQ:-512} tokens of its train split, $(nproc) threads"
