#!/usr/bin/env bash
# Tokenizer speed, side by side in one run: single-thread encode MB/s of llmq and of the
# independent encoders available here (tiktoken's WebAssembly build, llama3-tokenizer-js) on
# the same real lines, then `llmq data prepare` throughput with all cores.
# usage: bench/tokenizer.sh      (needs scripts/fetch_data and a build)
set -euo pipefail
cd "$(dirname "$0")/.."
F="data/text/web.txt data/text/moby_dick.txt data/text/sotu.txt"
T=models/llama3-tokenizer
out=$( { OMP_NUM_THREADS=1 build/bench/bench_tokenizer $T $F; node bench/tokenizer_peers.cjs . $F; } )
printf "%-22s %10s %12s %14s\n" encoder "MB/s" tokens "vs tiktoken"
tk=$(awk '$1 == "tiktoken-wasm" {print $2}' <<<"$out")
while read -r name mbs toks; do
  printf "%-22s %10.2f %12d %13.2fx\n" "$name" "$mbs" "$toks" "$(awk -v a="$mbs" -v b="$tk" 'BEGIN {print a/b}')"
done <<<"$out"
[ "$(awk '{print $3}' <<<"$out" | sort -u | wc -l)" = 1 ] || echo "WARNING: token counts differ between encoders"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
js=$(build/llmq data prepare --tokenizer $T --input $F --out "$tmp/d" --json)
prep=$(sed -E 's/.*"mb_per_s":([0-9.e+-]+).*/\1/' <<<"$js")
printf "%-22s %10.2f %12s %14s\n" "data prepare ($(nproc) thr)" "$prep" "" ""
llmq_mbs=$(awk '$1 == "llmq" {print $2}' <<<"$out")
echo "summary: llmq encodes $(awk -v a="$llmq_mbs" -v b="$tk" 'BEGIN {printf "%.1f", a/b}')x the MB/s of tiktoken (wasm) single-threaded; data prepare $(printf %.1f "$prep") MB/s on $(nproc) cores"
