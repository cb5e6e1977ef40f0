#!/usr/bin/env bash
# Training runs under faults (issue 30): kill -9 at every rename and a full disk (ENOSPC
# injected by strace) at every write of `train`, Ctrl-C, a `latest` that lags a newer complete
# checkpoint, and temporaries left by killed runs. After each fault the user's next command
# (--resume when a checkpoint exists, else the same command again) must finish the run with
# weights bitwise equal to an uninterrupted run's, and leave no temporary files.
set -u
LLMQ=${1:?usage: train.sh path/to/llmq}
command -v strace >/dev/null || { echo "SKIP: strace is not installed (scripts/setup installs it)"; exit 0; }
source "$(dirname "$0")/../lib.sh"

head -c 100000 "$ROOT/data/text/web.txt" > "$T/text.txt"
L tokenizer train --input "$T/text.txt" --vocab 400 --out "$T/tok" >/dev/null 2>&1 || { bad "tokenizer train"; exit 1; }
L data prepare --tokenizer "$T/tok" --input "$T/text.txt" --out "$T/d" >/dev/null 2>&1 || { bad "prepare"; exit 1; }
COMMON=(train --preset tiny --data "$T/d" --save-every 2 --keep 2 --batch 2 --seq-len 16 --sample-tokens 0)
TRAIN=("${COMMON[@]}" --steps 6)
L "${TRAIN[@]}" --out "$T/ref" >/dev/null 2>&1 || { bad "reference run"; exit 1; }
want=$(sha256sum < "$T/ref/checkpoint-000006/model.safetensors")
leftovers() { find "$1" -name '*.tmp.*' -o -name '.tmp-checkpoint-*' 2>/dev/null; }

# finish RUN: what a user does next; then the run must equal the reference, with no leftovers.
finish() {
  local run=$1 what=$2 resume=()
  ls "$run" 2>/dev/null | grep -q '^checkpoint-' && resume=(--resume)
  L "${TRAIN[@]}" --out "$run" "${resume[@]}" >/dev/null 2>"$T/finish.err" || { bad "$what: the next run failed: $(tail -1 "$T/finish.err")"; return 1; }
  [ "$(sha256sum < "$run/checkpoint-000006/model.safetensors")" = "$want" ] || { bad "$what: weights differ from the uninterrupted run"; return 1; }
  [ -z "$(leftovers "$run")" ] || { bad "$what: left $(leftovers "$run" | tr '\n' ' ')"; return 1; }
  [ "$(cat "$run/latest")" = checkpoint-000006 ] || { bad "$what: latest is $(cat "$run/latest")"; return 1; }
  return 0
}

# kill -9 at rename n = 1, 2, ... (every AtomicFile commit, each checkpoint's rename into
# place, latest, the metrics trim) until a run completes untouched.
n=0 kills=0 failed=0
while :; do
  n=$((n+1)); rm -rf "$T/k"
  ( strace -f -qq -o /dev/null -e trace=rename -e inject=rename:signal=KILL:when=$n "$LLMQ" --threads 1 "${TRAIN[@]}" --out "$T/k" >/dev/null 2>&1; exit $? ) 2>/dev/null
  [ $? -eq 0 ] && break
  kills=$((kills+1))
  finish "$T/k" "killed at rename $n" || { failed=1; break; }
  [ $n -lt 60 ] || { bad "train never completed under strace"; failed=1; break; }
done
[ $failed -eq 0 ] && ok "train killed at each of its $kills renames: the next run always finished bitwise equal, nothing left"

# A full disk at write n (ENOSPC): the run stops with one error (or, for a write to stderr,
# goes on); the next run finishes it. Every write when there are few, else 40 spread over them.
writes=$(strace -f -qq -c -e trace=write "$LLMQ" --threads 1 "${TRAIN[@]}" --out "$T/w1" 2>&1 >/dev/null | awk '$NF=="write"{print $4}')
stride=$(( writes > 40 ? writes / 40 : 1 )); hit=0 failed=0 msgs=""
for n in $(seq 1 "$stride" "$writes"); do
  rm -rf "$T/f"
  err=$(strace -f -qq -o /dev/null -e trace=write -e inject=write:error=ENOSPC:when=$n "$LLMQ" --threads 1 "${TRAIN[@]}" --out "$T/f" 2>&1 >/dev/null); rc=$?
  if [ $rc -ne 0 ]; then
    hit=$((hit+1))
    [ $rc -eq 1 ] || { bad "ENOSPC at write $n: exit $rc, not one clear error"; failed=1; break; }
    msgs+="$(grep -o 'error: .*' <<<"$err" | head -c 90)"$'\n'
  fi
  finish "$T/f" "ENOSPC at write $n" || { failed=1; break; }
done
[ $failed -eq 0 ] && ok "full disk at each of $(seq 1 "$stride" "$writes" | wc -l) of $writes writes ($hit stopped the run, exit 1): the next run always finished bitwise equal; e.g. $(sort -u <<<"$msgs" | head -2 | tr '\n' '|')"

# Ctrl-C: the run saves a checkpoint at the step it stops at and exits 130; --resume finishes it.
LONG=(train --preset tiny --data "$T/d" --steps 100000 --save-every 50000 --batch 2 --seq-len 16 --sample-tokens 0)
"$LLMQ" --threads 1 "${LONG[@]}" --out "$T/c" >/dev/null 2>"$T/c.err" & pid=$!
for i in $(seq 50); do sleep 0.1; grep -q "step " "$T/c.err" 2>/dev/null && break; done
kill -INT $pid; wait $pid; rc=$?
ck=$(cat "$T/c/latest" 2>/dev/null)
[ $rc -eq 130 ] && [ -n "$ck" ] && [ -f "$T/c/$ck/train_state.bin" ] && grep -q "stopped by Ctrl-C (SIGINT) after step" "$T/c.err" \
  && ok "Ctrl-C: exit 130 with $ck saved: $(grep -o 'stopped by.*' "$T/c.err")" || bad "Ctrl-C: rc=$rc latest=$ck $(tail -2 "$T/c.err")"
step=$((10#${ck#checkpoint-}))
L "${LONG[@]}" --out "$T/c" --resume --stop-after $((step + 3)) 2>&1 >/dev/null | grep -q "resuming at step $step " \
  && ok "Ctrl-C'd run resumes at step $step" || bad "resume after Ctrl-C"
"$LLMQ" --threads 1 "${LONG[@]}" --out "$T/s" >/dev/null 2>"$T/s.err" & pid=$!
for i in $(seq 50); do sleep 0.1; grep -q "step " "$T/s.err" 2>/dev/null && break; done
kill -TERM $pid; wait $pid; rc=$?
[ $rc -eq 143 ] && [ -f "$T/s/$(cat "$T/s/latest")/train_state.bin" ] && ok "SIGTERM: exit 143 with a checkpoint" || bad "SIGTERM: rc=$rc"

# A kill between publishing checkpoint-N and updating latest: resume takes the newest
# complete checkpoint, and says so. And temporaries of killed runs are removed by the next.
L "${TRAIN[@]}" --stop-after 4 --out "$T/lag" >/dev/null 2>&1 || bad "train lag"
echo checkpoint-000002 > "$T/lag/latest"
touch "$T/lag/latest.tmp.999999" "$T/lag/metrics.jsonl.tmp.999998"; mkdir -p "$T/lag/.tmp-checkpoint-000006"
err=$(L "${TRAIN[@]}" --out "$T/lag" --resume 2>&1 >/dev/null)
grep -q "latest names checkpoint-000002, but checkpoint-000004 is newer and complete" <<<"$err" && grep -q "resuming at step 4 " <<<"$err" \
  && ok "resume after a lagging latest: from checkpoint-000004, said" || bad "lagging latest: $err"
[ "$(sha256sum < "$T/lag/checkpoint-000006/model.safetensors")" = "$want" ] && [ -z "$(leftovers "$T/lag")" ] \
  && ok "...finished bitwise equal; killed runs' temporaries removed" || bad "lag run: $(leftovers "$T/lag")"

echo "faults/train: $fails failure(s)"
[ $fails -eq 0 ]
