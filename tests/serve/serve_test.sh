#!/usr/bin/env bash
# llmq serve end to end on loopback: the official OpenAI client (npm openai) against llmq
# generate (openai_test.mjs), bad requests (curl: malformed JSON, wrong types, a 100 MB body,
# a wrong API key, unknown paths) answered with the right 4xx while the server keeps serving,
# the chat page in headless Chromium (chat_page.mjs, screenshot build/serve_chat.png), then
# load and disconnects (load_test.mjs), then SIGTERM stops it cleanly.
set -u
LLMQ=${1:?usage: serve_test.sh path/to/llmq}
source "$(dirname "$0")/../lib.sh"
NM=$ROOT/data/npm/node_modules
[ -d "$NM/openai" ] || { echo "FAIL: $NM/openai missing (run scripts/fetch_data)"; exit 1; }
KEY=test-key-123

# A tiny model with the Llama 3 tokenizer, quantized (w4a16: batch-invariant kernels).
"$LLMQ" init --preset tiny --tokenizer "$ROOT/models/llama3-tokenizer" --out "$T/m" --seed 3 > /dev/null 2>&1 || bad "init"
"$LLMQ" quantize -m "$T/m" --out "$T/q" --scheme w4a16 --group 32 > /dev/null 2>&1 || bad "quantize"

timeout 600 "$LLMQ" -t 1 serve -m "$T/q" --port 0 --parallel 8 --ctx 256 --batch-tokens 32 --max-queue 48 \
  --api-key "$KEY" 2> "$T/serve.log" &
SPID=$!
PORT=""
for _ in $(seq 1 100); do
  PORT=$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$T/serve.log" | grep -o '[0-9]*$')
  [ -n "$PORT" ] && curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break
  sleep 0.2
done
URL=http://127.0.0.1:$PORT
curl -sf "$URL/health" > /dev/null && ok "server up on $URL" || { bad "server did not start: $(cat "$T/serve.log")"; exit 1; }

node "$ROOT/tests/serve/openai_test.mjs" "$NM" "$URL" "$KEY" "$T/q" "$LLMQ" || fails=$((fails+1))

# Bad requests: status and a JSON error object; the server keeps serving.
expect_status() {  # expect_status STATUS WHAT CURL-ARGS...
  local want=$1 what=$2; shift 2
  local got
  got=$(curl -s -o "$T/body" -w '%{http_code}' "$@")
  if [ "$got" = "$want" ] && grep -q '"error"' "$T/body"; then ok "$what -> $got $(head -c 100 "$T/body")"
  else bad "$what: HTTP $got (want $want): $(head -c 200 "$T/body")"; fi
}
AUTH=(-H "Authorization: Bearer $KEY" -H 'Content-Type: application/json')
expect_status 400 "malformed JSON" "${AUTH[@]}" -d '{"prompt": "a",' "$URL/v1/completions"
expect_status 400 "wrong type" "${AUTH[@]}" -d '{"prompt": "a", "max_tokens": "many"}' "$URL/v1/completions"
expect_status 400 "chat without messages" "${AUTH[@]}" -d '{"prompt": "a"}' "$URL/v1/chat/completions"
expect_status 400 "token id outside the vocabulary" "${AUTH[@]}" -d '{"prompt": [1, 99999999]}' "$URL/v1/completions"
expect_status 401 "no API key" -d '{"prompt": "a"}' "$URL/v1/completions"
expect_status 401 "wrong API key" -H "Authorization: Bearer $KEY-x" -d '{"prompt": "a"}' "$URL/v1/completions"
expect_status 404 "unknown path" "${AUTH[@]}" "$URL/v1/nothing"
head -c 100000000 /dev/zero | tr '\0' 'a' > "$T/big.json"
expect_status 413 "100 MB body" "${AUTH[@]}" --data-binary @"$T/big.json" "$URL/v1/completions"
out=$(curl -s "${AUTH[@]}" -d '{"prompt": "Still there?", "max_tokens": 3}' "$URL/v1/completions")
grep -q '"text_completion"' <<<"$out" && ok "still serving after the bad requests" || bad "not serving: $out"
tk=$(curl -s "${AUTH[@]}" -d '{"prompt": "Hello world"}' "$URL/tokenize")
dt=$(curl -s "${AUTH[@]}" -d "{\"tokens\": $(node -e "console.log(JSON.stringify(JSON.parse(process.argv[1]).tokens.slice(1)))" "$tk")}" "$URL/detokenize")
grep -q '"prompt":"Hello world"' <<<"$dt" && ok "tokenize/detokenize round trip ($tk)" || bad "tokenize/detokenize: $tk / $dt"
curl -s "$URL/" | grep -q '<title>llmq chat</title>' && ok "chat page at /" || bad "no chat page"
curl -s "$URL/metrics" | grep -q '^llmq_time_to_first_token_seconds_bucket{le="+Inf"}' && ok "/metrics histograms" || bad "/metrics"

# The chat page in headless Chromium: a scripted two-turn conversation, a screenshot.
SHOT=$ROOT/build/serve_chat.png
if command -v chromium > /dev/null; then
  node --no-warnings --experimental-websocket "$ROOT/tests/serve/chat_page.mjs" "$URL" "$KEY" "$SHOT" || fails=$((fails+1))
else
  bad "chromium missing (scripts/setup installs it)"
fi

# llmq bench serve against it: closed loop and Poisson arrivals, every request answered.
for args in "--concurrency 1,3 --requests 6" "--concurrency 4 --requests 8 --rate 20"; do
  j=$(timeout 300 "$LLMQ" bench serve --url "$URL" --api-key "$KEY" $args --prompt-len 24 --gen-len 8 --json)
  if /usr/bin/python3 -c 'import json,sys; d=json.loads(sys.argv[1]); assert all(r["failed"]==0 and r["output_tokens"]==r["requests"]*8 and r["ttft_s"]["p50"]>0 for r in d["rows"])' "$j" 2>/dev/null
  then ok "bench serve $args: $(head -c 150 <<<"$j")"; else bad "bench serve $args: $j"; fi
done

LPID=$(pgrep -P $SPID -x llmq)  # the server under `timeout`
node "$ROOT/tests/serve/load_test.mjs" "$URL" "$KEY" "$LPID" || fails=$((fails+1))

kill -TERM $SPID
wait $SPID; rc=$?
[ $rc = 0 ] && grep -q 'stopped' "$T/serve.log" && ok "SIGTERM stops the server (rc 0)" || bad "SIGTERM: rc $rc: $(tail -3 "$T/serve.log")"
echo "serve_test: $fails failure(s)"
[ $fails = 0 ]
