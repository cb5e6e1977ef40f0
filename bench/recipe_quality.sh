#!/usr/bin/env bash
# Mixed-precision recipes (issue 28) on the trained small model (the small preset's widths,
# dim 384 / ffn 1024 / 6 blocks, trained by bench/finetune_quality.sh as runs/ft-base): uniform
# 4-bit and 2-bit, the 4/2 mix (attention 4-bit g128, MLP 2-bit g16 HQQ along the outputs),
# the same with the first and last blocks at 8 bits, and with the two blocks the sensitivity
# helper finds most sensitive at 8 bits instead (the same average bits). Each scored against
# the float model by `llmq eval compare` on held-out tokens: stored bits per weight of the
# blocks' linears (codes, scales and zero points: `llmq info`), perplexity ratio, KLD, top-1.
# usage: bench/recipe_quality.sh            (prints a markdown table; ~8 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
L=build/llmq
R=runs/ft-base
[ -f $R/latest ] || { echo "run bench/finetune_quality.sh first (it trains runs/ft-base)"; exit 1; }
BASE=$R/$(cat $R/latest)
EV="--data data/ft-base --max-tokens 16384 --ctx 256"
CAL="--calib data/ft-base --calib-samples 16 --calib-seq-len 256"
W=$(mktemp -d /tmp/llmq-recipes.XXXX)
trap 'rm -rf $W' EXIT
LOW="w2a16:g16:hqq:axis0"
S=$($L quantize -m $BASE --sensitivity --probe $LOW $CAL --json)
SUG=$(/usr/bin/python3 -c 'import json,sys; print("|".join(b["selector"] for b in json.loads(sys.argv[1])["blocks"][:2]))' "$S")
echo "sensitivity at $LOW (calibration split: train; scored below on validation):"
/usr/bin/python3 -c 'import json,sys
j = json.loads(sys.argv[1])
print("  roles:  " + ", ".join("%s %.2e" % (r["unit"], r["kld_mean"]) for r in j["roles"]))
print("  blocks: " + ", ".join("%s %.2e" % (r["unit"], r["kld_mean"]) for r in j["blocks"]))' "$S"
row() {  # name, quantize args...
  local name=$1; shift
  $L quantize -m $BASE --out $W/q "$@" --overwrite > /dev/null 2>&1
  /usr/bin/python3 - "$name" "$*" "$($L eval compare -m $BASE -q $W/q $EV --json 2>/dev/null)" "$($L info $W/q --json 2>/dev/null)" <<'PY'
import json, sys
j, info = json.loads(sys.argv[3]), json.loads(sys.argv[4])
print("| %s | `%s` | %.2f | %.4f | %.5f | %.2f%% |" % (sys.argv[1], sys.argv[2].replace("|", "\\|"), info["bits_blocks_linears"], j["ppl_ratio"],
      j["kld_mean"], 100 * j["top1_agreement"]))
PY
}
MIX="self_attn=w4a16:g128,mlp=$LOW"
echo "base $BASE: $($L eval ppl -m $BASE $EV --json | /usr/bin/python3 -c 'import json,sys; print("perplexity %.3f" % json.load(sys.stdin)["ppl"])')"
echo "| recipe | arguments | bits/weight (blocks' linears, stored) | ppl ratio | mean KLD | top-1 |"
echo "|---|---|---|---|---|---|"
row "uniform 4-bit" --scheme w4a16 --group 128
row "uniform 2-bit (HQQ)" --mix "default=$LOW"
row "4/2 mix" --mix "$MIX"
row "4/2, first+last blocks 8-bit" --mix "first:1|last:1=w8a16,$MIX"
row "4/2, sensitivity's 2 blocks 8-bit" --mix "$SUG=w8a16,$MIX"
row "2-bit, sensitivity's 2 blocks 8-bit" --mix "$SUG=w8a16,default=$LOW"
# HQQ's 2-bit codes with groups of 64 along the inputs: less scale overhead (f16 scale and
# zero per 64 weights, 0.5 bits) than g16's 2 bits.
LOW64="w2a16:g64:hqq"
row "uniform 2-bit g64 (HQQ)" --mix "default=$LOW64"
row "4/2 g64, sensitivity's 2 blocks 8-bit" --mix "$SUG=w8a16,self_attn=w4a16:g128,mlp=$LOW64"
