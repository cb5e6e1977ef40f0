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

if [ $fails -ne 0 ]; then echo "$fails failure(s)"; exit 1; fi
echo "all text bad-input cases handled"
