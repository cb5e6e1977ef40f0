#!/usr/bin/env bash
# Damaged inputs and state that used to be accepted (issue 30): an out-of-vocabulary id in a
# shard is found when the shards are opened, not when its window is drawn; a config's bad
# torch_dtype names the file; GGUF tensors that overlap are refused (parser_bounds_test).
set -u
LLMQ=${1:?usage: state.sh path/to/llmq}
source "$(dirname "$0")/../lib.sh"

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

# Item 6: a failed metrics append (file-size limit standing in for a full disk) stops the run
# with a clear message at that step; a torn last row is said by report and dropped on resume.
err=$(bash -c "ulimit -f 2; exec $LLMQ --threads 1 train -m $T/m --data $T/d --out $T/full --steps 60 --log-every 1 --save-every 0 --batch 1 --seq-len 16 --sample-tokens 0" 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && grep -q "writing the metrics failed at step" <<<"$err" && ok "metrics write failure stops the run: $(grep error <<<"$err" | head -c 150)" \
  || bad "metrics write failure: rc=$rc $(tail -2 <<<"$err")"
L train -m "$T/m" --data "$T/d" --out "$T/torn" --steps 4 --save-every 2 --batch 1 --seq-len 16 >/dev/null 2>&1 || bad "train torn"
printf '{"step": 5, "loss": 3.' >> "$T/torn/metrics.jsonl"
L report "$T/torn" 2>&1 | grep -q "warning: .*skipped 1 unreadable line" && ok "report says the torn line" || bad "report on a torn file"
L train -m "$T/m" --data "$T/d" --out "$T/torn" --steps 6 --save-every 2 --batch 1 --seq-len 16 --resume 2>&1 >/dev/null \
  | grep -q "dropped 1 unreadable (torn) line" && ok "resume drops the torn line, said" || bad "resume on a torn file"

# Item 9: a train_state.bin whose step or cursor does not fit its run is refused, not resumed
# as "nothing to train" (same-length edits of the JSON header).
L train -m "$T/m" --data "$T/d" --out "$T/cs" --steps 4 --save-every 2 --batch 1 --seq-len 16 --keep 1 >/dev/null 2>&1 || bad "train cs"
st="$T/cs/checkpoint-000004/train_state.bin"; cp "$st" "$T/st.bak"
sed -i 's/"step":4}/"step":9}/' "$st"
err=$(L train -m "$T/m" --data "$T/d" --out "$T/cs" --steps 4 --save-every 2 --batch 1 --seq-len 16 --keep 1 --resume 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && grep -q "says step 9, which is not this checkpoint's step" <<<"$err" && ok "corrupt step refused" || bad "corrupt step: rc=$rc $err"
cp "$T/st.bak" "$st"; sed -i 's/"cursor":4,/"cursor":7,/' "$st"
err=$(L train -m "$T/m" --data "$T/d" --out "$T/cs" --steps 6 --save-every 2 --batch 1 --seq-len 16 --keep 1 --resume 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && grep -q "data cursor 7 is not step 4" <<<"$err" && ok "corrupt cursor refused" || bad "corrupt cursor: rc=$rc $err"

echo "faults/state: $fails failure(s)"
[ $fails -eq 0 ]
