#!/usr/bin/env bash
# Data-parallel training speed on this machine: 1 rank with 2 threads against 2 ranks
# (mpirun) with 1 thread each, the same global batch; per-rank bytes sent per step against
# `llmq plan`, and rank 0's peak RSS against the plan's per-rank memory (the difference is
# the process: binary, libraries, MPI's shared-memory segments).
# usage: bench/ddp.sh [STEPS] [PRESET] [DATA]    (default 20 small data/small)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-20}
P=${2:-small}
D=${3:-data/small}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT
ARGS=(train --preset "$P" --data "$D" --steps "$STEPS" --batch 8 --seq-len 256 --warmup 2 --log-every "$STEPS"
      --eval-every 0 --save-every 0 --sample-tokens 0 --json)
printf "%-6s %-9s %10s %16s %16s %14s %14s\n" ranks threads "tok/s" "sent/step MB" "plan MB" "rank0 RSS MB" "plan mem MB"
for n in 1 2; do
  if [ $n = 1 ]; then j=$(build/llmq -t 2 "${ARGS[@]}" --out "$out/r$n" 2>/dev/null | tail -1)
  else j=$(mpirun -np $n build/llmq -t 1 "${ARGS[@]}" --out "$out/r$n" 2>/dev/null | tail -1); fi
  p=$(build/llmq plan --preset "$P" --ranks $n --batch $((8 / n)) --seq-len 256 --json)
  /usr/bin/python3 - "$n" "$j" "$p" "$STEPS" <<'PY'
import json, sys
n, j, p, steps = int(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
print(f"{n:<6} {2 // n:<9} {j['tokens_per_s']:10.0f} {j['bytes_sent_per_rank'] / steps / 1e6:16.2f} "
      f"{p['comm_bytes_per_step_per_rank']['data_parallel'] / 1e6:16.2f} {j['peak_rss_bytes'] / 1e6:14.0f} "
      f"{p['per_rank_bytes']['total'] / 1e6:14.0f}")
PY
done
echo "summary: $(date -u +%F), preset $P, global batch 8 x 256 tokens, $STEPS steps, OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}; tok/s is the last $STEPS steps' rate"
