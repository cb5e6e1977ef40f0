#!/usr/bin/env bash
# Memory of GGUF loads (issue 29): peak RSS of loading llama3.2-1b (random bf16 weights,
# exported to f16/q8_0/q4_0 GGUF) and decoding 8 tokens, of `eval ppl`, and of quantizing from
# the f16 GGUF, beside the same from the bf16 model directory. Give a second llmq binary (an
# older build) to print both side by side in one run.
# usage: bench/gguf_memory.sh [OTHER_LLMQ]
set -euo pipefail
cd "$(dirname "$0")/.."
L=build/llmq
OTHER=${1:-}
M=models/llama3.2-1b-bf16
[ -f $M/config.json ] || $L init --preset llama3.2-1b --dtype bf16 --out $M --seed 0 >/dev/null
[ -f $M/tokenizer.json ] || cp models/llama3-tokenizer/tokenizer.json models/llama3-tokenizer/tokenizer_config.json $M/
for t in f16 q8_0 q4_0; do
  [ -f models/llama3.2-1b-$t.gguf ] || $L export -m $M --type $t --out models/llama3.2-1b-$t.gguf >/dev/null
done
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
seq 1 600 | tr '\n' ' ' > "$tmp/ids.txt"
# peak BIN ARGS...: "seconds peak-RSS-MB" of one run.
peak() {
  local bin=$1; shift
  /usr/bin/time -f "%e %M" -o "$tmp/t" "$bin" "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; echo "- -"; return; }
  awk '{printf "%.1f %.0f", $1, $2/1024}' "$tmp/t"
}
printf "%-34s %-10s %12s %12s\n" job binary "seconds" "peak RSS MB"
declare -A res
for src in "$M" models/llama3.2-1b-f16.gguf models/llama3.2-1b-q8_0.gguf models/llama3.2-1b-q4_0.gguf; do
  name=$(basename "$src")
  for bin in $L $OTHER; do
    tag=$([ "$bin" = "$L" ] && echo new || echo old)
    r=$(peak "$bin" generate -m "$src" --ids -p "1 2 3 4" -n 8)
    printf "%-34s %-10s %12s %12s\n" "generate 8 ($name)" "$tag" $r
    res[gen-$name-$tag]=${r#* }
    r=$(peak "$bin" eval ppl -m "$src" --tokens "$tmp/ids.txt" --ctx 128 --max-tokens 256)
    printf "%-34s %-10s %12s %12s\n" "eval ppl 256 ($name)" "$tag" $r
  done
done
for bin in $L $OTHER; do
  tag=$([ "$bin" = "$L" ] && echo new || echo old)
  for src in "$M" models/llama3.2-1b-f16.gguf; do
    rm -rf "$tmp/q"
    r=$(peak "$bin" quantize -m "$src" --scheme w4a16 --out "$tmp/q")
    printf "%-34s %-10s %12s %12s\n" "quantize w4a16 ($(basename "$src"))" "$tag" $r
    res[q-$(basename "$src")-$tag]=${r#* }
  done
done
echo "summary: generate peak RSS MB (new): dir ${res[gen-llama3.2-1b-bf16-new]}, f16 gguf ${res[gen-llama3.2-1b-f16.gguf-new]}, q4_0 gguf ${res[gen-llama3.2-1b-q4_0.gguf-new]}${OTHER:+ (old: dir ${res[gen-llama3.2-1b-bf16-old]}, f16 ${res[gen-llama3.2-1b-f16.gguf-old]}, q4_0 ${res[gen-llama3.2-1b-q4_0.gguf-old]})}; quantize from f16 gguf ${res[q-llama3.2-1b-f16.gguf-new]} MB${OTHER:+ (old ${res[q-llama3.2-1b-f16.gguf-old]})} vs from the dir ${res[q-llama3.2-1b-bf16-new]}"
