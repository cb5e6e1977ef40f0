#!/usr/bin/env bash
# Quantized decode and prefill, side by side with llama.cpp on the same weights, in one run:
# llama3.2-1b with random bf16 weights (models/, created on first use) as llmq bf16, w8a16,
# w4a16 (round-to-nearest, lm_head quantized too), llmq on the GGUF files themselves, and,
# exported from the same weights, as
# llama.cpp f16, q8_0, q4_0 (every matrix in the type, via node-llama-cpp's prebuilt CPU
# build). Same thread count; rounds alternate the engines so both see the same host load.
# Decode is also shown against the memory-bandwidth floor (bytes of weights read per token /
# read bandwidth measured just before each pair of engines runs; the summary gives the median share over the rounds).
# Every engine reports the best of REPS (default 3) timings within one process, as the
# floor is the best of its readings: like against like on this host, whose speed swings
# within seconds.
# usage: [REPS=3] bench/quant.sh [rounds, default 3]    (respects OPENBLAS_CORETYPE; say which)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
reps=${REPS:-3}
L=build/llmq
T=$(nproc)
P=128; G=64
M=models/llama3.2-1b-bf16
[ -f $M/config.json ] || $L init --preset llama3.2-1b --dtype bf16 --out $M --seed 0
[ -f $M/tokenizer.json ] || cp models/llama3-tokenizer/tokenizer.json models/llama3-tokenizer/tokenizer_config.json $M/
for s in w8a16 w4a16; do
  [ -f models/llama3.2-1b-$s/config.json ] || $L quantize -m $M --scheme $s --sym --out models/llama3.2-1b-$s --json > /dev/null
done
for t in f16 q8_0 q4_0; do
  [ -f models/llama3.2-1b-$t.gguf ] || $L export -m $M --type $t --out models/llama3.2-1b-$t.gguf --json > /dev/null
done
DRV="node tests/llamacpp/llamacpp.mjs $PWD/data/llamacpp/node_modules"
# Bytes of weights read per decoded token: every matrix once (the embedding row is noise).
declare -A bytes=(
  [bf16]=$(( $(stat -c %s $M/model.safetensors) ))
  [w8a16]=$(( $(stat -c %s models/llama3.2-1b-w8a16/model.safetensors) - 128256*2048*2 ))
  [w4a16]=$(( $(stat -c %s models/llama3.2-1b-w4a16/model.safetensors) - 128256*2048*2 ))
  [f16]=$(stat -c %s models/llama3.2-1b-f16.gguf) [q8_0]=$(stat -c %s models/llama3.2-1b-q8_0.gguf)
  [q4_0]=$(stat -c %s models/llama3.2-1b-q4_0.gguf))
printf "%-6s %-16s %8s %10s %10s %10s %10s\n" round engine "decode" "% floor" "prefill" "GB/s read" "floor GB/s"
declare -A dsum psum fl
# Read bandwidth: the best of three 1 GiB readings, taken just before each pair of engines
# runs (the shared host drifts between fast and slow phases within minutes, so a reading at
# the start of a round can be far from what a run three minutes later sees).
membw() { for i in 1 2 3; do build/bench/bench_membw 1024 | awk '/summary/ {print $6}'; done | sort -g | tail -1; }
for r in $(seq 1 "$rounds"); do
  for pair in "bf16 f16" "w8a16 q8_0" "w4a16 q4_0"; do
    read -r a b <<<"$pair"
    bw=$(membw)
    js=$($L bench -m models/llama3.2-1b-$a --prompt $P --gen $G --reps $reps --json)
    d=$(sed -E 's/.*"decode_tok_s":([0-9.e+-]+).*/\1/' <<<"$js"); p=$(sed -E 's/.*"prefill_tok_s":([0-9.e+-]+).*/\1/' <<<"$js")
    # llama.cpp: one untimed evaluation of the prompt first (the driver's warm-up), as its
    # first pass over freshly mapped weights pays for first-touch page faults.
    js2=$(REPS=$reps $DRV models/llama3.2-1b-$b.gguf bench $P $G $T)
    d2=$(sed -E 's/.*"decode_tok_s":([0-9.e+-]+).*/\1/' <<<"$js2"); p2=$(sed -E 's/.*"prefill_tok_s":([0-9.e+-]+).*/\1/' <<<"$js2")
    # llmq on the very GGUF file llama.cpp runs (q8_0/q4_0: groups of 32 in llmq's layout);
    # the file is mapped, so the first repetition also warms the mapping, as above.
    js3=$($L bench -m models/llama3.2-1b-$b.gguf --prompt $P --gen $G --reps $(( reps > 1 ? reps : 2 )) --json)
    d3=$(sed -E 's/.*"decode_tok_s":([0-9.e+-]+).*/\1/' <<<"$js3"); p3=$(sed -E 's/.*"prefill_tok_s":([0-9.e+-]+).*/\1/' <<<"$js3")
    for e in "llmq-$a $d $p ${bytes[$a]}" "llmq-gguf-$b $d3 $p3 ${bytes[$b]}" "llama.cpp-$b $d2 $p2 ${bytes[$b]}"; do
      read -r name dd pp by <<<"$e"
      f=$(awk -v d="$dd" -v b="$by" -v bw="$bw" 'BEGIN {printf "%.1f", 100*d*b/(bw*1e9)}')
      printf "%-6s %-16s %8.2f %9s%% %10.1f %10.1f %10.1f\n" "$r" "$name" "$dd" "$f" "$pp" \
        "$(awk -v d="$dd" -v b="$by" 'BEGIN {print d*b/1e9}')" "$bw"
      dsum[$name]=$(awk -v s="${dsum[$name]:-0}" -v d="$dd" 'BEGIN {print s+d}')
      psum[$name]=$(awk -v s="${psum[$name]:-0}" -v d="$pp" 'BEGIN {print s+d}')
      fl[$name]="${fl[$name]:-} $f"
    done
  done
done
# Median over the rounds of decode as a share of the adjacent bandwidth floor.
median() { tr ' ' '\n' <<<"${fl[$1]}" | grep . | sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
echo "median % of floor over $rounds rounds: llmq bf16 $(median llmq-bf16)%, w8a16 $(median llmq-w8a16)%, w4a16 $(median llmq-w4a16)%; llama.cpp f16 $(median llama.cpp-f16)%, q8_0 $(median llama.cpp-q8_0)%, q4_0 $(median llama.cpp-q4_0)%"
ratio() { awk -v a="${dsum[$1]}" -v b="${dsum[$2]}" 'BEGIN {printf "%.2f", a/b}'; }
pratio() { awk -v a="${psum[$1]}" -v b="${psum[$2]}" 'BEGIN {printf "%.2f", a/b}'; }
echo "same GGUF files: decode llmq/llama.cpp f16 $(ratio llmq-gguf-f16 llama.cpp-f16)x, q8_0 $(ratio llmq-gguf-q8_0 llama.cpp-q8_0)x, q4_0 $(ratio llmq-gguf-q4_0 llama.cpp-q4_0)x"
echo "summary: decode llmq/llama.cpp bf16/f16 $(ratio llmq-bf16 llama.cpp-f16)x, w8a16/q8_0 $(ratio llmq-w8a16 llama.cpp-q8_0)x, w4a16/q4_0 $(ratio llmq-w4a16 llama.cpp-q4_0)x; prefill $(pratio llmq-bf16 llama.cpp-f16)x, $(pratio llmq-w8a16 llama.cpp-q8_0)x, $(pratio llmq-w4a16 llama.cpp-q4_0)x ($T threads, prompt $P, best of $reps, OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset})"
