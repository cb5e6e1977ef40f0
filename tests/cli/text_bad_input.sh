#!/usr/bin/env bash
# Bad text input to the tokenizer and data commands: invalid UTF-8, NUL bytes, empty input,
# a 100 MB line without a newline, corrupt or truncated tokenizer files, bad JSONL. Each
# case must either work with defined output (checked) or exit 1 with one error line.
set -u
LLMQ=${1:?usage: text_bad_input.sh path/to/llmq}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TOK=$ROOT/models/llama3-tokenizer
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fails=$((fails+1)); }

expect_error() {  # expect_error NEEDLE -- ARGS... (stdin from $STDIN_FILE if set)
  local needle=$1; shift; shift
  local err rc
  err=$(timeout 120 "$LLMQ" "$@" 2>&1 >/dev/null < "${STDIN_FILE:-/dev/null}"); rc=$?
  if [ $rc -ne 1 ]; then bad "rc=$rc (want 1): llmq $* :: $(head -c 200 <<<"$err")"; return; fi
  grep -qF -- "$needle" <<<"$err" || { bad "message lacks '$needle': $err"; return; }
  [ "$(grep -c 'llmq: error:' <<<"$err")" = 1 ] || { bad "not one error line: $err"; return; }
  ok "llmq ${*:1:4} -> $(head -c 120 <<<"$err")"
}

for c in tokenizer "tokenizer encode" "tokenizer decode" "tokenizer info" "tokenizer train" data "data prepare"; do
  timeout 20 "$LLMQ" $c --help >/dev/null 2>&1 || bad "llmq $c --help"
done

# Round trips through the CLI: invalid UTF-8 and NUL bytes survive encode -> decode exactly.
printf 'caf\xc3\xa9 \xff\xfe broken \xe6\x97 utf8\nnul\x00byte\x00\n\n   \n' > "$T/weird.txt"
"$LLMQ" tokenizer encode --tokenizer "$TOK" < "$T/weird.txt" > "$T/ids.txt" || bad "encode weird bytes"
"$LLMQ" tokenizer decode --tokenizer "$TOK" < "$T/ids.txt" > "$T/back.txt" || bad "decode weird bytes"
cmp -s "$T/weird.txt" "$T/back.txt" && ok "invalid UTF-8 and NUL bytes round-trip" || bad "round trip of weird bytes differs"
[ "$(wc -l < "$T/ids.txt")" = 4 ] && ok "one output line per input line, empty lines included" || bad "line count"
: > "$T/empty.txt"
[ -z "$("$LLMQ" tokenizer encode --tokenizer "$TOK" < "$T/empty.txt")" ] && ok "empty input, empty output" || bad "empty input"

# A 100 MB line with no newline: encoded in bounded time and memory, ids count checked by decode.
head -c 100000000 < <(yes "The whale, the whale! 12345 naïve    spaces" | tr -d '\n') > "$T/big.txt"
/usr/bin/time -f "%M" -o "$T/rss" timeout 300 "$LLMQ" tokenizer encode --tokenizer "$TOK" < "$T/big.txt" > "$T/big.ids"; rc=$?
if [ $rc -eq 0 ] && [ "$(wc -l < "$T/big.ids")" = 1 ]; then
  ok "100 MB line encoded ($(wc -w < "$T/big.ids") tokens, peak RSS $(( $(cat "$T/rss") / 1024 )) MB)"
else bad "100 MB line (rc=$rc)"; fi
"$LLMQ" tokenizer decode --tokenizer "$TOK" < "$T/big.ids" | head -c 100000000 | cmp -s - "$T/big.txt" \
  && ok "100 MB line decodes back" || bad "100 MB line does not decode back"
rm -f "$T/big.ids"

# Corrupt and truncated tokenizer files.
head -c 100000 "$TOK/tokenizer.json" > "$T/trunc.json"
expect_error "trunc.json: malformed JSON" -- tokenizer encode --tokenizer "$T/trunc.json"
head -c 5000 /dev/urandom > "$T/garbage.model"
expect_error "garbage.model" -- tokenizer info --tokenizer "$T/garbage.model"
printf 'IQ== 0\nIQ== 1\n' > "$T/dup.model"
expect_error "appears twice" -- tokenizer info --tokenizer "$T/dup.model"
mkdir -p "$T/notok"
expect_error "no tokenizer.json or tokenizer.model" -- tokenizer info --tokenizer "$T/notok"
expect_error "no such tokenizer" -- tokenizer info --tokenizer "$T/nothere"
printf '1 2 99999999\n' > "$T/oov.txt"
STDIN_FILE="$T/oov.txt" expect_error "outside the vocabulary" -- tokenizer decode --tokenizer "$TOK"
printf '1 2 x\n' > "$T/nan.txt"
STDIN_FILE="$T/nan.txt" expect_error "stdin line 1" -- tokenizer decode --tokenizer "$TOK"

# data prepare: bad JSONL, missing input, a text file of weird bytes (works).
printf '{"text": "ok"}\n{"text": 5}\n' > "$T/bad.jsonl"
expect_error "bad.jsonl:2:" -- data prepare --tokenizer "$TOK" --input "$T/bad.jsonl" --out "$T/d1"
printf 'not json at all\n' > "$T/bad2.jsonl"
expect_error "bad2.jsonl:1: not a JSON object" -- data prepare --tokenizer "$TOK" --input "$T/bad2.jsonl" --out "$T/d2"
expect_error "no such input file" -- data prepare --tokenizer "$TOK" --input "$T/missing.txt" --out "$T/d3"
"$LLMQ" data prepare --tokenizer "$TOK" --input "$T/weird.txt" "$T/empty.txt" --out "$T/d4" --json > /dev/null \
  && ok "data prepare of weird bytes and an empty file" || bad "data prepare weird bytes"
printf 'a\n' > "$T/small.txt"
expect_error "vocab" -- tokenizer train --input "$T/small.txt" --vocab 300 --out "$T/t"

# train: missing or damaged data, a tokenizer that does not match, too long sequences.
timeout 20 "$LLMQ" train --help >/dev/null 2>&1 || bad "llmq train --help"
printf 'one two three four five six seven eight nine ten\n%.0s' $(seq 1 30) > "$T/train.txt"
"$LLMQ" data prepare --tokenizer "$TOK" --input "$T/train.txt" --out "$T/td" --val-fraction 0 --json > /dev/null || bad "prepare train data"
"$LLMQ" init --preset tiny --out "$T/tm" --dtype f32 > /dev/null 2>&1
cp -r "$T/tm" "$T/tm_tok"; cp "$TOK/tokenizer.json" "$T/tm_tok/"
expect_error "not a directory" -- train --preset tiny --data "$T/nodata" --out "$T/r1"
mkdir -p "$T/nodata2"; expect_error "no manifest.json" -- train --preset tiny --data "$T/nodata2" --out "$T/r1"
expect_error "vocabulary is 512" -- train --model "$T/tm" --data "$T/td" --out "$T/r2"
cp -r "$T/td" "$T/td_trunc"; truncate -s -8 "$T/td_trunc/train_000000.bin"
expect_error "truncated or corrupt" -- train --model "$T/tm" --data "$T/td_trunc" --out "$T/r3"
expect_error "exceeds the model's context" -- train --preset llama3.2-1b --data "$T/td" --out "$T/r4" --seq-len 1000000
"$LLMQ" init --preset tiny --tokenizer "$TOK" --out "$T/tm_big" --dtype f32 > /dev/null 2>&1
expect_error "nothing to resume" -- train --model "$T/tm_big" --data "$T/td" --out "$T/r5" --resume
head -c 200000 "$ROOT/data/text/web.txt" > "$T/spm_in.txt"
"$LLMQ" tokenizer train --input "$T/spm_in.txt" --vocab 1000 --out "$T/spm" > /dev/null 2>&1
"$LLMQ" init --preset tiny --tokenizer "$T/spm" --out "$T/tm_spm" --dtype f32 > /dev/null 2>&1
expect_error "re-run \`llmq data prepare\` with this tokenizer" -- train --model "$T/tm_spm" --data "$T/td" --out "$T/r6"

# Options from a file (command line wins), and bad options files.
printf '# options\n[train]\nsteps = 5\nbatch = 2\nseq_len = 16\nrecompute = true\neval_every = "0"\nsample-tokens = 0\n' > "$T/opts.toml"
out=$("$LLMQ" train --options "$T/opts.toml" --model "$T/tm_big" --data "$T/td" --out "$T/ro" --steps 3 --json 2>/dev/null)
grep -q '"steps":3' <<<"$out" && [ -f "$T/ro/checkpoint-000003/model.safetensors" ] \
  && ok "train --options FILE (command line wins: $out)" || bad "train --options: $out"
printf 'steps = 5\nno_such_flag = 2\n' > "$T/opts_bad.toml"
expect_error "opts_bad.toml:2: no command has an option --no-such-flag" -- train --options "$T/opts_bad.toml" --model "$T/tm_big" --data "$T/td" --out "$T/ro2"
printf 'steps 5\n' > "$T/opts_bad2.toml"
expect_error "opts_bad2.toml:1: expected \`key = value\`" -- train --options "$T/opts_bad2.toml" --model "$T/tm_big" --data "$T/td" --out "$T/ro2"
expect_error "No such file" -- train --options "$T/missing.toml" --model "$T/tm_big" --data "$T/td" --out "$T/ro2"

# A full disk while writing a checkpoint: the file-size limit (ulimit -f, SIGXFSZ ignored so
# the write fails with EFBIG as it would with ENOSPC) lets the run write its metrics but not
# the next model file. The run must fail with one error, `latest` must still name the
# previous checkpoint, intact, and a resume with room must finish the run.
run=(train --model "$T/tm_big" --data "$T/td" --out "$T/rf" --steps 4 --batch 2 --seq-len 16 --eval-every 0 --sample-tokens 0)
"$LLMQ" "${run[@]}" --stop-after 2 > /dev/null 2>&1 || bad "first half before the full disk"
sum_before=$(sha256sum "$T/rf/checkpoint-000002/model.safetensors" "$T/rf/checkpoint-000002/train_state.bin")
kb=$(( $(stat -c %s "$T/rf/checkpoint-000002/model.safetensors") / 2048 ))
err=$( (trap '' XFSZ; ulimit -f "$kb"; exec "$LLMQ" "${run[@]}" --resume) 2>&1 >/dev/null); rc=$?
if [ $rc -eq 1 ] && [ "$(grep -c 'llmq: error:' <<<"$err")" = 1 ] && [ "$(cat "$T/rf/latest")" = checkpoint-000002 ] \
   && [ "$sum_before" = "$(sha256sum "$T/rf/checkpoint-000002/model.safetensors" "$T/rf/checkpoint-000002/train_state.bin")" ]; then
  ok "full disk while checkpointing: one error ($(grep 'llmq: error' <<<"$err" | head -c 140)), previous checkpoint intact"
else bad "full disk: rc=$rc latest=$(cat "$T/rf/latest") :: $err"; fi
"$LLMQ" "${run[@]}" --resume > /dev/null 2>&1 && [ "$(cat "$T/rf/latest")" = checkpoint-000004 ] \
  && [ -z "$(ls -A "$T/rf" | grep '^\.tmp')" ] && ok "resume after the full disk finishes, no temporary files left" \
  || bad "resume after the full disk"

# kill -9 during training, at whatever moment it lands: --resume (or a fresh start when no
# checkpoint was finished yet) completes the run. Checkpoints every step maximise the
# chance of landing inside a checkpoint write.
"$LLMQ" train --model "$T/tm_big" --data "$T/td" --out "$T/rk" --steps 40 --batch 2 --seq-len 16 --save-every 1 \
  --eval-every 0 --log-every 40 > /dev/null 2>&1 &
pid=$!
sleep 3; kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
again="--resume"; [ -f "$T/rk/latest" ] || again=""
if "$LLMQ" train --model "$T/tm_big" --data "$T/td" --out "$T/rk" --steps 40 --batch 2 --seq-len 16 --save-every 1 \
     --eval-every 0 --log-every 40 $again > /dev/null 2>&1 && [ "$(cat "$T/rk/latest")" = checkpoint-000040 ]; then
  ok "kill -9 mid-run, then ${again:-a fresh start} finishes ($(ls "$T/rk" | tr '\n' ' '))"
else bad "resume after kill -9"; fi

# data generate (issue 23) into a full disk (ulimit -f 2: 2 KB): one error naming the samples
# that did not fit; what was written is whole JSONL lines; with room, the run continues to the
# same bytes as an uninterrupted one. And task files with a bad answer index.
gen=(data generate -m "$T/tm_big" --samples 24 --seq-len 24 --batch 4)
err=$( (trap '' XFSZ; ulimit -f 2; exec "$LLMQ" -t 1 "${gen[@]}" --out "$T/gen.jsonl") 2>&1 >/dev/null); rc=$?
if [ $rc -eq 1 ] && [ "$(grep -c 'llmq: error:' <<<"$err")" = 1 ] && grep -q "complete samples" <<<"$err" \
   && [ -s "$T/gen.jsonl" ] && /usr/bin/python3 -c "
import json, sys
for l in open(sys.argv[1]): assert l.endswith('\\n') and 'text' in json.loads(l)" "$T/gen.jsonl"; then
  ok "data generate into a full disk: $(grep 'llmq: error' <<<"$err" | head -c 120); $(wc -l < "$T/gen.jsonl") whole lines kept"
else bad "data generate, full disk: rc=$rc :: $err"; fi
"$LLMQ" -t 1 "${gen[@]}" --out "$T/gen.jsonl" >/dev/null 2>&1 && "$LLMQ" -t 1 "${gen[@]}" --out "$T/gen2.jsonl" >/dev/null 2>&1 \
  && cmp -s "$T/gen.jsonl" "$T/gen2.jsonl" && ok "data generate continued after the full disk = one uninterrupted run" \
  || bad "data generate: the continued file differs"
expect_error "greedy-prefix" -- data generate -m "$T/tm_big" --out "$T/g3.jsonl" --greedy-prefix 5-2
printf '{"context": "a", "choices": [" b", " c"], "answer": 3}\n' > "$T/badtask.jsonl"
expect_error "badtask.jsonl:1: answer 3 is out of range for 2 choices" -- eval tasks -m "$T/tm_big" --tasks "$T/badtask.jsonl"

# qat (issue 23): a scheme the kernels cannot run; a resume whose teacher is another model (of
# another shape: the student is the teacher's copy, so a teacher of another shape can only come
# in through a resume); a kd weight outside [0, 1].
expect_error "not one the integer kernels run" -- qat -m "$T/tm_big" --data "$T/td" --out "$T/q1" --scheme w4a4kv4
expect_error "kd-weight" -- qat -m "$T/tm_big" --data "$T/td" --out "$T/q1" --scheme w4a8kv4 --kd-weight 1.5
"$LLMQ" init --preset tiny-tied --tokenizer "$TOK" --out "$T/tm_tied" --dtype f32 > /dev/null 2>&1
if "$LLMQ" qat -m "$T/tm_big" --data "$T/td" --out "$T/q2" --scheme w4a8kv4 --steps 2 --batch 2 --seq-len 16 \
     --eval-every 0 > /dev/null 2>&1 && [ -f "$T/q2/quantized/config.json" ]; then
  ok "qat 2 steps wrote the quantized model"
else bad "qat 2 steps"; fi
expect_error "q2" -- qat -m "$T/tm_tied" --data "$T/td" --out "$T/q2" --scheme w4a8kv4 --steps 4 --batch 2 --seq-len 16 --resume
# A resumed qat run is the uninterrupted one, byte for byte (student, AdamW state, the quantized model).
qa=(qat -m "$T/tm_big" --data "$T/td" --scheme w4a8kv4 --batch 2 --seq-len 16 --eval-every 0 --save-every 2 --lr 1e-3)
"$LLMQ" -t 1 "${qa[@]}" --out "$T/q3" --steps 4 > /dev/null 2>&1 && "$LLMQ" -t 1 "${qa[@]}" --out "$T/q4" --steps 4 --stop-after 2 \
  > /dev/null 2>&1 && "$LLMQ" -t 1 "${qa[@]}" --out "$T/q4" --steps 4 --resume > /dev/null 2>&1 &&
  cmp -s "$T/q3/checkpoint-000004/model.safetensors" "$T/q4/checkpoint-000004/model.safetensors" &&
  cmp -s "$T/q3/quantized/model.safetensors" "$T/q4/quantized/model.safetensors" &&
  ok "qat stopped at step 2 and resumed = the uninterrupted run, bitwise (student and quantized model)" ||
  bad "qat resume differs from the uninterrupted run"

if [ $fails -ne 0 ]; then echo "$fails failure(s)"; exit 1; fi
echo "all text bad-input cases handled"
