#!/usr/bin/env bash
# Memory per rank of QDoRA fine-tuning with the frozen base sharded over the ranks
# (`llmq finetune --fsdp`, issue 22), beside `llmq plan`'s figure for the same job.
# Shape: Llama 3 8B's widths (dim 4096, FFN 14336, GQA 32/8) with 8 blocks and untied 8k
# embeddings (random weights), the base quantized to HQQ-4 while loading, DoRA r 16 on every
# linear, global batch 4 x 64 tokens, 3 steps, --recompute. 1 process (-t 2), then 2 and 4
# ranks (-t 1 each, oversubscribed on 2 cores: memory is what is measured here, not speed).
# Peak RSS is each rank's (GNU time's maximum resident set).
# usage: bench/finetune_fsdp.sh [ranks, default "1 2 4"]
#   (needs data/ft-sotu and models/ft-tokenizer from bench/finetune_quality.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
L=$(realpath build/llmq)
DATA=data/ft-sotu
[ -f $DATA/manifest.json ] || { echo "run bench/finetune_quality.sh first (it prepares $DATA)"; exit 1; }
M=$(mktemp -d); trap 'rm -rf "$M"' EXIT
$L init --preset llama3-8b --layers 8 --tokenizer models/ft-tokenizer --out $M/base --dtype bf16 --seed 1 >/dev/null
B=4; T=64
printf "%-5s %-5s %12s %12s %12s %12s %10s\n" ranks rank "peak RSS" "plan" "RSS/plan" "base held" "tok/s"
summary=""
for W in ${1:-1 2 4}; do
  args=(finetune -m $M/base --data $DATA --out $M/run --overwrite --steps 3 --batch $B --seq-len $T --log-every 1
        --eval-every 0 --eval-batches 1 --save-every 0 --warmup 1 --rank 16 --adapter dora --quantize-base hqq4 --recompute --json)
  [ "$W" -gt 1 ] && args+=(--fsdp)
  if [ "$W" = 1 ]; then
    /usr/bin/time -f "peak_kb %M" -o $M/time.0 $L -t 2 "${args[@]}" > $M/out.json 2>$M/log
  else
    mpirun -np $W bash -c "/usr/bin/time -f 'peak_kb %M' -o $M/time.\$OMPI_COMM_WORLD_RANK $L -t 1 ${args[*]}" \
      > $M/out.json 2>$M/log
  fi
  plan=$($L plan -m $M/base --ranks $W $([ "$W" -gt 1 ] && echo --fsdp) --batch $((B / W)) --seq-len $T --quant hqq4 \
         --lora-rank 16 --dora --recompute --json)
  for ((r = 0; r < W; r++)); do
    line=$(/usr/bin/python3 - "$M/time.$r" "$plan" "$M/out.json" "$W" "$r" <<'PY'
import json, sys
peak = int(open(sys.argv[1]).read().split()[-1]) * 1024
plan = json.loads(sys.argv[2])["per_rank_bytes"]
out = json.loads(open(sys.argv[3]).read().strip().splitlines()[-1])
W, r = int(sys.argv[4]), int(sys.argv[5])
tps = "%.0f" % out["tokens_per_s"] if r == 0 else ""
held = plan["weights"] - 0  # the plan's (most loaded rank's) base + adapters
print("%-5d %-5d %11.0fM %11.0fM %12.2f %11.0fM %10s" % (W, r, peak / 1e6, plan["total"] / 1e6, peak / plan["total"], held / 1e6, tps))
PY
)
    echo "$line"
    [ "$r" = 0 ] && summary="$summary ${W}:$(echo "$line" | awk '{print $3}')"
  done
done
echo "summary: peak RSS of rank 0 per world size (QDoRA hqq4, llama3-8b widths x 8 blocks):$summary"
