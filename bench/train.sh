#!/usr/bin/env bash
# Training speed side by side in one run: `llmq train` in f32 and in bf16 (--precision bf16),
# and a plain PyTorch implementation of the same model (bench/train_peer.py) in f32 and under
# CPU autocast to bfloat16, same threads, same batch, alternating, on two shapes:
#   small: the small preset (dim 384, 6 layers, 8k vocabulary), B 8 x T 256
#   1b-8L: llama3.2-1b's widths (dim 2048, 32/8 heads, FFN 8192), 8 layers, 8k vocabulary,
#          B 1 x T 1024
# Tokens/s, model FLOPs utilisation against the measured f32 sgemm and bf16 dot-product
# peaks (bench_sgemm), peak RSS.
# usage: bench/train.sh [rounds, default 1] [shapes, default "small 1b-8L"]
#   (needs data/small and models/small-tokenizer from scripts/train_small.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-1}
shapes=${2:-"small 1b-8L"}
L=build/llmq
TOK=models/small-tokenizer
DATA=data/small
[ -f $DATA/manifest.json ] || { echo "run scripts/train_small.sh first (it prepares $DATA)"; exit 1; }
M=$(mktemp -d); trap 'rm -rf "$M"' EXIT
threads=$(nproc)
read -r peak peak16 < <(build/bench/bench_sgemm | awk '/summary/ {print $4, $9}')
printf "%-6s %-5s %-11s %10s %8s %9s\n" shape round run "tok/s" MFU "peak RSS"
summary=""
for shape in $shapes; do
  case $shape in
    small) init="--preset small"; B=8; T=256; steps=26; logs=12; tsteps=16 ;;
    1b-8L) init="--preset llama3.2-1b --layers 8"; B=1; T=1024; steps=4; logs=2; tsteps=2 ;;
    *) echo "unknown shape $shape"; exit 1 ;;
  esac
  $L init $init --tokenizer $TOK --out $M/m --overwrite --dtype f32 --seed 3 >/dev/null 2>&1
  read -r dim layers heads kv ffn vocab params < <(/usr/bin/python3 - $M/m/config.json <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
d, l, h, kv, f, v = c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"], c["intermediate_size"], c["vocab_size"]
hd = d // h
p = v * d * 2 + l * (2 * d + d * h * hd * 2 + 2 * d * kv * hd + 3 * d * f) + d
print(d, l, h, kv, f, v, p)
PY
)
  # FLOPs per token: 6 per matmul parameter (forward 2, backward 4; the input embedding is a
  # lookup, so its V*dim are left out; the output projection counts whether tied or not)
  # plus causal attention's 6*L*T*dim (QK^T and PV, forward 2x and backward 4x, half of T x T).
  flops=$(awk -v p="$params" -v v="$vocab" -v l="$layers" -v t="$T" -v d="$dim" 'BEGIN {print 6*(p - v*d) + 6*l*t*d}')
  declare -A sum=()
  for r in $(seq 1 "$rounds"); do
    for run in llmq-f32 llmq-bf16 torch-f32 torch-bf16; do
      prec=${run#*-}
      if [[ $run == llmq-* ]]; then
        rm -rf $M/run
        out=$($L train --model $M/m --data $DATA --out $M/run --overwrite --steps $steps --batch $B --seq-len $T --warmup 1 \
              --eval-every 0 --save-every 1000 --log-every $logs --sample-tokens 0 --precision $prec --json 2>/dev/null)
        tps=$(sed -E 's/.*"tokens_per_s":([0-9.e+-]+).*/\1/' <<<"$out")
        rss=$(sed -E 's/.*"peak_rss_bytes":([0-9.e+-]+).*/\1/' <<<"$out")
      else
        read -r _ tps rss < <(/usr/bin/python3 bench/train_peer.py $dim $layers $heads $kv $ffn $vocab $B $T $tsteps $threads $prec)
      fi
      pk=$peak; [ "$prec" = bf16 ] && pk=$peak16
      mfu=$(awk -v a="$tps" -v f="$flops" -v p="$pk" 'BEGIN {printf "%.1f%%", 100*a*f/1e9/p}')
      printf "%-6s %-5s %-11s %10.0f %8s %8.2fG\n" "$shape" "$r" "$run" "$tps" "$mfu" "$(awk -v r="$rss" 'BEGIN {print r/1e9}')"
      sum[$run]=$(awk -v a="${sum[$run]:-0}" -v b="$tps" 'BEGIN {print a+b}')
    done
  done
  ratio() { awk -v a="${sum[$1]}" -v b="${sum[$2]}" 'BEGIN {printf "%.2f", a/b}'; }
  summary+="$shape: llmq bf16/torch f32 $(ratio llmq-bf16 torch-f32)x, llmq bf16/torch bf16 $(ratio llmq-bf16 torch-bf16)x, llmq f32/torch f32 $(ratio llmq-f32 torch-f32)x, llmq bf16/f32 $(ratio llmq-bf16 llmq-f32)x; "
  unset sum
done
echo "summary: ${summary}$threads threads, OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}, sgemm peak $peak GFLOP/s, bf16 peak $peak16 GFLOP/s"
