#!/usr/bin/env bash
# bf16 against f32 over a real run: the small preset, B 8 x T 256, STEPS steps (default 200)
# on data/small from the same initial weights, once per precision; prints the training loss
# every 20 steps side by side, the held-out loss at the end, and writes `llmq report` of both
# runs overlaid (OUT/report.html).
# usage: bench/train_bf16_curve.sh [steps, default 200] [out dir, default runs/bf16-curve]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-200}
OUT=${2:-runs/bf16-curve}
L=build/llmq
[ -f data/small/manifest.json ] || { echo "run scripts/train_small.sh first (it prepares data/small)"; exit 1; }
mkdir -p "$OUT"
$L init --preset small --tokenizer models/small-tokenizer --out "$OUT/init" --overwrite --dtype f32 --seed 1 >/dev/null 2>&1
for p in f32 bf16; do
  $L train --model "$OUT/init" --data data/small --out "$OUT/$p" --overwrite --steps "$STEPS" --batch 8 --seq-len 256 \
    --lr 2e-3 --warmup 20 --eval-every 50 --eval-batches 16 --save-every "$STEPS" --log-every 50 --sample-tokens 0 \
    --precision $p --json > "$OUT/$p.json" 2>/dev/null
done
$L report "$OUT/f32" "$OUT/bf16" --out "$OUT/report.html" >/dev/null 2>&1 || true
/usr/bin/python3 - "$OUT" "$STEPS" <<'PY'
import json, sys
out, steps = sys.argv[1], int(sys.argv[2])
def rows(p): return [json.loads(l) for l in open(f"{out}/{p}/metrics.jsonl")]
rf, rb = rows("f32"), rows("bf16")
lf = {r["step"]: r["loss"] for r in rf if "loss" in r}; lb = {r["step"]: r["loss"] for r in rb if "loss" in r}
vf = {r["step"]: r["val_loss"] for r in rf if "val_loss" in r}; vb = {r["step"]: r["val_loss"] for r in rb if "val_loss" in r}
jf, jb = json.load(open(f"{out}/f32.json")), json.load(open(f"{out}/bf16.json"))
print(f"{'steps':>9} {'f32 loss':>9} {'bf16 loss':>9} {'diff':>7}")
worst = 0
for w in range(0, steps, 20):
    r = range(w + 1, min(steps, w + 20) + 1)
    mf, mb = sum(lf[s] for s in r) / len(r), sum(lb[s] for s in r) / len(r)
    worst = max(worst, abs(mf - mb))
    print(f"{w + 1:>4}-{r[-1]:<4} {mf:9.4f} {mb:9.4f} {mb - mf:+7.4f}")
for s in sorted(vf):
    print(f"held-out at step {s}: f32 {vf[s]:.4f} bf16 {vb[s]:.4f} ({100 * (vb[s] - vf[s]) / vf[s]:+.2f}%)")
last = max(vf)
print(f"summary: {steps} steps, small preset B 8 x T 256: largest 20-step mean loss difference {worst:.4f} nats; "
      f"final held-out loss f32 {vf[last]:.4f}, bf16 {vb[last]:.4f} ({100 * (vb[last] - vf[last]) / vf[last]:+.2f}%); "
      f"tok/s f32 {jf['tokens_per_s']:.0f}, bf16 {jb['tokens_per_s']:.0f}")
PY
