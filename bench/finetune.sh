#!/usr/bin/env bash
# Adapter fine-tuning against full training of the same model and batch, in one run (issue 22):
#   small  the small preset (dim 384, 6 blocks, 8k vocabulary), B 8 x T 256: full training,
#          LoRA, DoRA, QLoRA and QDoRA (HQQ-4 base), r 16, products in f32 and in bf16
#   1b-8L  llama3.2-1b's widths with 8 blocks (random weights, 8k vocabulary), B 1 x T 1024:
#          full training against QDoRA on an HQQ-4 base (quantized while loading)
# Tokens/s is the median of the per-step figures after the first two steps (metrics.jsonl,
# --log-every 1); peak RSS is the process's; `plan` is `llmq plan`'s total for the same job.
# usage: bench/finetune.sh [shapes, default "small 1b-8L"] [steps, default 12]
#   (needs data/ft-sotu and models/ft-tokenizer from bench/finetune_quality.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
shapes=${1:-"small 1b-8L"}
steps=${2:-12}
L=build/llmq
TOK=models/ft-tokenizer
DATA=data/ft-sotu
[ -f $DATA/manifest.json ] || { echo "run bench/finetune_quality.sh first (it prepares $DATA)"; exit 1; }
M=$(mktemp -d); trap 'rm -rf "$M"' EXIT
median_tps() {  # run dir -> median tokens/s over steps > 2
  /usr/bin/python3 -c '
import json, statistics, sys
v = [j["tokens_per_s"] for j in map(json.loads, open(sys.argv[1] + "/metrics.jsonl")) if "tokens_per_s" in j and j["step"] > 2]
print("%.0f" % statistics.median(v))' "$1"
}
printf "%-6s %-22s %-5s %10s %8s %11s %10s %10s\n" shape run prec "tok/s" "vs full" "trained" "peak RSS" plan
summary=""
for shape in $shapes; do
  case $shape in
    small) init="--preset small"; B=8; T=256; runs="full lora dora qlora-hqq4 qdora-hqq4"; precs="f32 bf16"; s=$steps ;;
    1b-8L) init="--preset llama3.2-1b --layers 8"; B=1; T=1024; runs="full qdora-hqq4"; precs="bf16"; s=4 ;;
    *) echo "unknown shape $shape"; exit 1 ;;
  esac
  $L init $init --tokenizer $TOK --out $M/$shape --dtype bf16 --seed 1 >/dev/null
  for prec in $precs; do
    full=""
    for run in $runs; do
      common="--data $DATA --out $M/run --overwrite --steps $s --batch $B --seq-len $T --log-every 1 --eval-every 0 \
        --save-every 0 --warmup 1 --precision $prec --json"
      case $run in
        full) cmd="$L train --model $M/$shape $common --sample-tokens 0" ;;
        lora) cmd="$L finetune -m $M/$shape $common --rank 16" ;;
        dora) cmd="$L finetune -m $M/$shape $common --rank 16 --adapter dora" ;;
        qlora-hqq4) cmd="$L finetune -m $M/$shape $common --rank 16 --quantize-base hqq4" ;;
        qdora-hqq4) cmd="$L finetune -m $M/$shape $common --rank 16 --adapter dora --quantize-base hqq4" ;;
      esac
      j=$($cmd 2>/dev/null)
      tps=$(median_tps $M/run)
      [ -z "$full" ] && full=$tps
      planq=""
      case $run in
        lora) planq="--lora-rank 16" ;;
        dora) planq="--lora-rank 16 --dora" ;;
        qlora-hqq4) planq="--quant hqq4 --lora-rank 16" ;;
        qdora-hqq4) planq="--quant hqq4 --lora-rank 16 --dora" ;;
      esac
      p=$($L plan -m $M/$shape --seq-len $T --batch $B $planq --json 2>/dev/null |
          /usr/bin/python3 -c 'import json,sys; j=json.load(sys.stdin); print("%.0fM" % (j["per_rank_bytes"]["total"]/1e6))' 2>/dev/null || echo "-")
      /usr/bin/python3 -c '
import json, sys
j = json.loads(sys.argv[1]); tps, full = float(sys.argv[2]), float(sys.argv[3])
print("%-6s %-22s %-5s %10.0f %7.2fx %11d %9.0fM %10s" % (sys.argv[4], sys.argv[5], sys.argv[6], tps, tps / full,
      j["trained_params"], j["peak_rss_bytes"] / 1e6, sys.argv[7]))' "$j" "$tps" "$full" $shape $run $prec "$p"
      summary="$summary $shape/$run/$prec=$(/usr/bin/python3 -c "print('%.2f' % ($tps / $full))")x"
    done
  done
done
echo "summary: adapter tokens/s relative to full training of the same model and batch:$summary"
