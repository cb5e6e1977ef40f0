#!/usr/bin/env bash
# GGUF k-quants (issue 27): llmq against llama.cpp (built natively by bench/llama_server.sh
# from the source node-llama-cpp ships) on the same files, which llama.cpp's own quantizer
# writes (llama-quantize Q4_K_M and Q6_K from an f16 GGUF that llmq exports), for two
# shapes: llama3.2-1b and 8 blocks of the llama3-8b widths (random weights; speed depends
# on shapes only). Prefill (llmq bench --prompt 128 vs llama-bench pp128) and decode
# (--gen 32 vs tg32), 2 threads, alternating peers so both see the same host phases; the
# decode floor is the weight bytes a decode step streams over the read bandwidth measured
# in the same run (bench_membw). Then correctness on llama.cpp's own files: a model trained
# here with k-quant-sized rows, quantized by llama-quantize, scored by llmq and by llama.cpp
# (node-llama-cpp) on the same tokens.
# usage: bench/kquant.sh [ROUNDS=2]   (respects OPENBLAS_CORETYPE; say which)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
L=build/llmq
bench/llama_server.sh > /dev/null
LB=data/llamacpp/build/bin/llama-bench
LQ=data/llamacpp/build/bin/llama-quantize
W=models/kquant-bench
mkdir -p $W
bw=$(build/bench/bench_membw 1024 | sed -n 's/.*read-only \([0-9.]*\) GB.*/\1/p')
echo "llama.cpp $(git -C data/llamacpp/src describe --tags --always), read bandwidth $bw GB/s, OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}, 2 threads"
printf "%-22s %-7s %10s %10s %7s %10s %10s %7s %9s\n" shape type "llmq pp" "l.cpp pp" ratio "llmq tg" "l.cpp tg" ratio "tg/floor"
for shape in llama3.2-1b:0 llama3-8b:8; do
  preset=${shape%%:*}; layers=${shape#*:}
  name=$preset; [ "$layers" != 0 ] && name="$preset x$layers blocks"
  M=$W/$preset-$layers
  if [ ! -f $M.f16.gguf ]; then
    extra=(); [ "$layers" != 0 ] && extra=(--layers "$layers")
    $L init --preset $preset --dtype bf16 --out $M --seed 0 "${extra[@]}" --overwrite > /dev/null 2>&1
    cp models/llama3-tokenizer/tokenizer.json models/llama3-tokenizer/tokenizer_config.json $M/
    $L export -m $M --type f16 --out $M.f16.gguf > /dev/null 2>&1
    rm -rf $M
  fi
  for ty in Q4_K_M Q6_K; do
    g=$M.$ty.gguf
    [ -f $g ] || $LQ $M.f16.gguf $g $ty 2 > /dev/null 2>&1
    best() { sort -g | tail -1; }
    a_pp=(); a_tg=(); b_pp=(); b_tg=()
    for r in $(seq 1 "$ROUNDS"); do
      j=$($L bench -m $g --prompt 128 --gen 32 --reps 2 -t 2 --json 2>/dev/null)
      a_pp+=("$(/usr/bin/python3 -c 'import json,sys; print(json.loads(sys.argv[1])["prefill_tok_s"])' "$j")")
      a_tg+=("$(/usr/bin/python3 -c 'import json,sys; print(json.loads(sys.argv[1])["decode_tok_s"])' "$j")")
      wb=$(/usr/bin/python3 -c 'import json,sys; print(json.loads(sys.argv[1])["decode_weight_bytes"])' "$j")
      out=$($LB -m $g -t 2 -p 128 -n 32 -r 2 -o csv 2>/dev/null)
      pick() { /usr/bin/python3 -c 'import csv,io,sys
for r in csv.DictReader(io.StringIO(sys.argv[1])):
    if (r["n_prompt"], r["n_gen"]) == (sys.argv[2], sys.argv[3]): print(r["avg_ts"])' "$out" "$1" "$2"; }
      b_pp+=("$(pick 128 0)")
      b_tg+=("$(pick 0 32)")
    done
    app=$(printf '%s\n' "${a_pp[@]}" | best); atg=$(printf '%s\n' "${a_tg[@]}" | best)
    bpp=$(printf '%s\n' "${b_pp[@]}" | best); btg=$(printf '%s\n' "${b_tg[@]}" | best)
    /usr/bin/python3 -c "import sys
app,bpp,atg,btg,wb,bw=map(float,sys.argv[1:7])
floor=bw*1e9/wb
print('%-22s %-7s %10.1f %10.1f %6.2fx %10.2f %10.2f %6.2fx %8.0f%%' % (sys.argv[7], sys.argv[8], app, bpp, app/bpp, atg, btg, atg/btg, 100*atg/floor))" \
      "$app" "$bpp" "$atg" "$btg" "$wb" "$bw" "$name" "$ty"
  done
done
echo "(pp: prefill tok/s of 128 tokens; tg: decode tok/s; best of $ROUNDS alternating rounds; floor = read bandwidth / weight bytes per decode step)"
