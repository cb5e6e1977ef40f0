#!/usr/bin/env bash
# Tensor-parallel generation (mpirun -np 2 llmq generate --tp 2): the same greedy tokens as
# one process, for an f32 model and for w4a16 (groups of 32) and w8a16 (per channel)
# quantizations of it; what cannot be split fails with one message.
# usage: tests/dist/tp_test.sh LLMQ
set -euo pipefail
LLMQ=$(realpath "$1")
command -v mpirun >/dev/null || { echo "SKIP: mpirun not installed (scripts/setup installs openmpi-bin)"; exit 0; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails+1)); }
"$LLMQ" init --preset tiny --dtype f32 --seed 7 --out "$T/f32" >/dev/null
"$LLMQ" quantize -m "$T/f32" --scheme w4a16 --group 32 --out "$T/w4" --json >/dev/null
"$LLMQ" quantize -m "$T/f32" --scheme w8a16 --out "$T/w8" --json >/dev/null
GEN=(generate -p "1 17 42 99 3 250" --ids -n 32 --temperature 0 --ignore-eos --json)
tokens() { /usr/bin/python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['results'][0]['tokens'])"; }
for m in f32 w4 w8; do
  one=$("$LLMQ" -t 1 "${GEN[@]}" -m "$T/$m" 2>/dev/null | tokens)
  two=$(timeout 120 mpirun -np 2 "$LLMQ" "${GEN[@]}" -m "$T/$m" --tp 2 2>/dev/null | tokens) || { fail "$m: tp run"; continue; }
  if [ "$one" = "$two" ]; then echo "ok: $m tp=2 tokens = 1 process: $one"; else fail "$m: tp=2 $two vs 1 process $one"; fi
done
expect_error() {  # expect_error NEEDLE -- command...
  local needle=$1; shift 2
  if timeout 60 "$@" >"$T/err.log" 2>&1; then fail "expected an error: $*"; return; fi
  grep -q -- "$needle" "$T/err.log" && echo "ok: $needle" || { fail "message lacks '$needle': $*"; tail -3 "$T/err.log"; }
}
expect_error "needs a job of 2 ranks" -- "$LLMQ" "${GEN[@]}" -m "$T/f32" --tp 2
expect_error "must divide the attention heads" -- mpirun -np 3 "$LLMQ" "${GEN[@]}" -m "$T/f32" --tp 3
"$LLMQ" quantize -m "$T/f32" --scheme w8a8 --out "$T/w8a8" --json >/dev/null
expect_error "per token or per tensor" -- mpirun -np 2 "$LLMQ" "${GEN[@]}" -m "$T/w8a8" --tp 2
[ $fails -eq 0 ] || { echo "$fails failure(s)"; exit 1; }
echo "tensor-parallel generation: all cases passed"
