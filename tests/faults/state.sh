#!/usr/bin/env bash
# Damaged inputs and state that used to be accepted (issue 30): an out-of-vocabulary id in a
# shard is found when the shards are opened, not when its window is drawn; a config's bad
# torch_dtype names the file; GGUF tensors that overlap are refused (parser_bounds_test).
set -u
LLMQ=${1:?usage: state.sh path/to/llmq}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fails=$((fails+1)); }
L() { timeout 300 "$LLMQ" --threads 1 "$@"; }

head -c 100000 "$ROOT/data/text/web.txt" > "$T/text.txt"
L tokenizer train --input "$T/text.txt" --vocab 400 --out "$T/tok" >/dev/null 2>&1 || { bad "tokenizer train"; exit 1; }
L init --preset tiny --tokenizer "$T/tok" --out "$T/m" --dtype f32 >/dev/null 2>&1 || { bad "init"; exit 1; }
L data prepare --tokenizer "$T/tok" --input "$T/text.txt" --out "$T/d" >/dev/null 2>&1 || { bad "prepare"; exit 1; }

# Item 10: one id past the vocabulary near the end of the shard; a 1-step run would draw
# windows elsewhere and never see it, so only a check at open finds it.
cp -r "$T/d" "$T/bad"; rm -f "$T/bad/.llmq-output.json"
n=$(stat -c %s "$T/bad/train_000000.bin")
printf '\xe7\x03\x00\x00' | dd of="$T/bad/train_000000.bin" bs=1 seek=$((n - 8)) conv=notrunc 2>/dev/null  # id 999
err=$(L train -m "$T/m" --data "$T/bad" --out "$T/run" --steps 1 --batch 1 --seq-len 16 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && grep -q "token id 999 at position" <<<"$err" && ok "out-of-vocabulary id found at open: $(grep error <<<"$err")" \
  || bad "out-of-vocabulary id: rc=$rc $(tail -2 <<<"$err")"

# Item 13: a bad torch_dtype names the file.
cp -r "$T/m" "$T/m8"; sed -i 's/"torch_dtype": "[a-z0-9]*"/"torch_dtype": "int8"/' "$T/m8/config.json"
err=$(L info "$T/m8" 2>&1); grep -q "config.json: torch_dtype: unknown dtype 'int8'" <<<"$err" && ok "torch_dtype error names the file" \
  || bad "torch_dtype: $err"

echo "faults/state: $fails failure(s)"
[ $fails -eq 0 ]
