#!/usr/bin/env bash
# Serving throughput: llmq serve against llama.cpp's llama-server (built natively by
# bench/llama_server.sh from node-llama-cpp's llama.cpp source) on the same GGUF file
# (llama3.2-1b shape, random weights, exported by llmq), same threads, same parallel slots,
# driven by the same client (llmq bench serve: closed loop, streamed, EOS ignored). Levels
# alternate between the two servers so both see the same host phases; each level has its own
# prompts (--seed), so no server finds a level's prompts in its prompt cache from the one before.
# usage: bench/serve.sh [TYPE=q4_0] [REQUESTS per level = 16] [LEVELS=1,2,4,8]
#        (respects OPENBLAS_CORETYPE; say which)
set -euo pipefail
cd "$(dirname "$0")/.."
TYPE=${1:-q4_0}
N=${2:-16}
LEVELS=${3:-1,2,4,8}
L=build/llmq
T=$(nproc)
PROMPT=128 GEN=64 SLOTS=8 CTX=256
M=models/llama3.2-1b-bf16
[ -f $M/config.json ] || $L init --preset llama3.2-1b --dtype bf16 --out $M --seed 0
[ -f $M/tokenizer.json ] || cp models/llama3-tokenizer/tokenizer.json models/llama3-tokenizer/tokenizer_config.json $M/
G=models/llama3.2-1b-$TYPE.gguf
[ -f $G ] || $L export -m $M --type $TYPE --out $G --json > /dev/null
bench/llama_server.sh > /dev/null
LS=data/llamacpp/build/bin/llama-server
log=$(mktemp -d)
cleanup() { kill $P1 $P2 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$log"; }
trap cleanup EXIT
$L serve -m $G --port 18431 --parallel $SLOTS --ctx $CTX -t $T > /dev/null 2> "$log/llmq.log" & P1=$!
$LS -m $G --port 18432 -t $T -np $SLOTS -c $((SLOTS * CTX)) --host 127.0.0.1 > "$log/ls.log" 2>&1 & P2=$!
for port in 18431 18432; do
  for _ in $(seq 1 300); do curl -sf http://127.0.0.1:$port/health > /dev/null && break; sleep 0.5; done
  curl -sf http://127.0.0.1:$port/health > /dev/null || { echo "server on $port did not start"; tail "$log"/*.log; exit 1; }
done
echo "llmq serve and llama-server $(git -C data/llamacpp/src describe --tags --always) on $G: $T threads, $SLOTS slots, prompt $PROMPT, gen $GEN, $N requests per level, OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
printf "%-6s %-13s %10s %10s %10s %10s %8s\n" conc server "out tok/s" "ttft p50" "tpot p50" "e2e p50" failed
declare -A tps
IFS=, read -ra lv <<< "$LEVELS"
for c in "${lv[@]}"; do
  for s in llmq llama-server; do
    port=18431; [ $s = llama-server ] && port=18432
    j=$($L bench serve --url http://127.0.0.1:$port --concurrency $c --requests $N --prompt-len $PROMPT --gen-len $GEN --seed $c --json)
    read -r out ttft tpot e2e failed < <(/usr/bin/python3 -c 'import json,sys; r=json.loads(sys.argv[1])["rows"][0]; print(r["output_throughput"], r["ttft_s"]["p50"], r["tpot_s"]["p50"], r["e2e_s"]["p50"], r["failed"])' "$j")
    tps[$s-$c]=$out
    printf "%-6s %-13s %10.1f %10.3f %10.4f %10.2f %8s\n" $c $s $out $ttft $tpot $e2e $failed
  done
done
ratios=""
for c in "${lv[@]}"; do ratios+="c$c $(/usr/bin/python3 -c "print(f'{${tps[llmq-$c]}/${tps[llama-server-$c]}:.2f}')")x, "; done
first=${lv[0]} last=${lv[-1]}
echo "summary: $TYPE output tok/s llmq/llama-server: ${ratios%, }; batching gain c$last/c$first: llmq $(/usr/bin/python3 -c "print(f'{${tps[llmq-$last]}/${tps[llmq-$first]}:.2f}')")x, llama-server $(/usr/bin/python3 -c "print(f'{${tps[llama-server-$last]}/${tps[llama-server-$first]}:.2f}')")x"
