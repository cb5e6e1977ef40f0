#!/usr/bin/env bash
# Training speed side by side in one run: `llmq train` and a plain PyTorch implementation
# of the same model (bench/train_peer.py, float32, same threads, same batch), alternating,
# as tokens/s and model FLOPs utilisation against the measured sgemm peak.
# usage: bench/train.sh [rounds, default 2]   (needs data/small from scripts/train_small.sh,
# or any prepared data whose tokenizer has VOCAB ids; env PRESET_DIM etc. not needed)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
L=build/llmq
TOK=models/small-tokenizer
DATA=data/small
[ -f $DATA/manifest.json ] || { echo "run scripts/train_small.sh first (it prepares $DATA)"; exit 1; }
M=$(mktemp -d); trap 'rm -rf "$M"' EXIT
$L init --preset small --tokenizer $TOK --out $M/m --overwrite --dtype f32 --seed 3 >/dev/null 2>&1
read -r dim layers heads kv ffn vocab params < <(/usr/bin/python3 - $M/m/config.json <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
d, l, h, kv, f, v = c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"], c["intermediate_size"], c["vocab_size"]
hd = d // h
p = v * d * 2 + l * (2 * d + d * h * hd * 2 + 2 * d * kv * hd + 3 * d * f) + d
print(d, l, h, kv, f, v, p)
PY
)
B=8; T=256; threads=$(nproc)
# FLOPs per token: 6 per matmul parameter (forward 2, backward 4; the input embedding is a
# lookup, not a matmul, so its V*dim are left out) plus attention's 12*L*T*dim
# (QK^T and PV, forward and backward, full T x T as both implementations compute it).
flops=$(awk -v p="$params" -v v="$vocab" -v l="$layers" -v t="$T" -v d="$dim" 'BEGIN {print 6*(p - v*d) + 12*l*t*d}')
peak=$(build/bench/bench_sgemm | awk '/summary/ {print $4}')
printf "%-6s %14s %14s %8s %10s %10s %16s\n" round "llmq tok/s" "torch tok/s" ratio "llmq MFU" "torch MFU" "--recompute tok/s"
for r in $(seq 1 "$rounds"); do
  rm -rf $M/run
  a=$($L train --model $M/m --data $DATA --out $M/run --overwrite --steps 12 --batch $B --seq-len $T --warmup 2 --eval-every 0 \
      --save-every 1000 --log-every 12 --json 2>/dev/null | sed -E 's/.*"tokens_per_s":([0-9.e+-]+).*/\1/')
  rm -rf $M/run
  c=$($L train --model $M/m --data $DATA --out $M/run --overwrite --steps 12 --batch $B --seq-len $T --warmup 2 --eval-every 0 \
      --save-every 1000 --log-every 12 --recompute --json 2>/dev/null | sed -E 's/.*"tokens_per_s":([0-9.e+-]+).*/\1/')
  b=$(/usr/bin/python3 bench/train_peer.py $dim $layers $heads $kv $ffn $vocab $B $T 10 $threads | awk '{print $2}')
  printf "%-6s %14.0f %14.0f %8.2f %9.1f%% %9.1f%% %16.0f\n" "$r" "$a" "$b" "$(awk -v a="$a" -v b="$b" 'BEGIN {print a/b}')" \
    "$(awk -v a="$a" -v f="$flops" -v p="$peak" 'BEGIN {print 100*a*f/1e9/p}')" \
    "$(awk -v a="$b" -v f="$flops" -v p="$peak" 'BEGIN {print 100*a*f/1e9/p}')" "$c"
done
rss=$($L train --model $M/m --data $DATA --out $M/run2 --overwrite --steps 2 --batch $B --seq-len $T --warmup 1 --eval-every 0 --json 2>/dev/null \
      | sed -E 's/.*"peak_rss_bytes":([0-9.e+-]+).*/\1/')
rssr=$($L train --model $M/m --data $DATA --out $M/run3 --overwrite --steps 2 --batch $B --seq-len $T --warmup 1 --eval-every 0 --recompute --json 2>/dev/null \
      | sed -E 's/.*"peak_rss_bytes":([0-9.e+-]+).*/\1/')
echo "summary: small preset ($params params, B=$B, T=$T, $threads threads, OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}): see ratio column; llmq peak RSS $(awk -v r="$rss" 'BEGIN {printf "%.0f MB", r/1e6}'), with --recompute $(awk -v r="$rssr" 'BEGIN {printf "%.0f MB", r/1e6}'); sgemm peak $peak GFLOP/s"
