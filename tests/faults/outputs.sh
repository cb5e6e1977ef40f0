#!/usr/bin/env bash
# Whole outputs under faults (issue 30): every command that writes a directory is killed
# (SIGKILL injected by strace) at each of its renames in turn, over a previous complete
# output. After each kill the target must be the previous output, byte for byte, or the
# complete new one (with its marker); a rerun must succeed and leave no temporary
# directories. A full disk (ENOSPC injected at each write, and ulimit -f) fails cleanly with
# the previous output intact, and a training run directory is never restarted over without --resume/--overwrite.
set -u
LLMQ=${1:?usage: outputs.sh path/to/llmq}
command -v strace >/dev/null || { echo "SKIP: strace is not installed (scripts/setup installs it)"; exit 0; }
source "$(dirname "$0")/../lib.sh"
sum_dir() { (cd "$1" 2>/dev/null && find . -type f -print0 | sort -z | xargs -0 -r sha256sum) | sha256sum | cut -c1-16; }
leftovers() { ls -a "$(dirname "$1")" | grep -E "^\.$(basename "$1")\.(tmp|old)\." || true; }

head -c 100000 "$ROOT/data/text/web.txt" > "$T/text.txt"
L tokenizer train --input "$T/text.txt" --vocab 400 --out "$T/tok" >/dev/null 2>&1 || { bad "tokenizer train"; exit 1; }
L init --preset tiny --tokenizer "$T/tok" --out "$T/m" --dtype f32 >/dev/null 2>&1 || { bad "init"; exit 1; }

# kill_each_rename TARGET -- ARGS...: TARGET holds a previous output; run ARGS with a SIGKILL at
# rename 1, 2, ... until a run completes.
kill_each_rename() {
  local target=$1; shift; shift
  local prev n rc cur kills=0
  prev=$(sum_dir "$target")
  for n in $(seq 1 40); do
    ( strace -f -qq -o /dev/null -e trace=rename -e inject=rename:signal=KILL:when=$n "$LLMQ" --threads 1 "$@" >/dev/null 2>&1; exit $? ) 2>/dev/null
    rc=$?
    [ $rc -eq 0 ] && break
    kills=$((kills+1))
    cur=$(sum_dir "$target")
    if [ "$cur" != "$prev" ] && [ ! -f "$target/.llmq-output.json" ]; then
      bad "${*:1:2}: killed at rename $n, the target is neither the previous output nor a complete one: $(ls -a "$target" 2>&1 | tr '\n' ' ')"
      return
    fi
  done
  [ $rc -eq 0 ] || { bad "${*:1:2}: never completed"; return; }
  # The swap into place (renameat2 RENAME_EXCHANGE over an existing output) killed too.
  prev=$(sum_dir "$target")
  ( strace -f -qq -o /dev/null -e trace=renameat2 -e inject=renameat2:signal=KILL:when=1 "$LLMQ" --threads 1 "$@" >/dev/null 2>&1; exit $? ) 2>/dev/null
  [ "$(sum_dir "$target")" = "$prev" ] || [ -f "$target/.llmq-output.json" ] || { bad "${*:1:2}: killed at the swap"; return; }
  L "$@" >/dev/null 2>&1 || { bad "${*:1:2}: rerun failed"; return; }
  [ -z "$(leftovers "$target")" ] || { bad "${*:1:2}: left $(leftovers "$target")"; return; }
  ok "${*:1:2}: killed at each of $kills renames, target always previous-or-complete; rerun clean"
}

# enospc_each_write TARGET -- ARGS...: TARGET holds a previous output; run ARGS with write n
# failing with ENOSPC (a full disk), for every write (40 spread over them when there are more).
# Each run must exit 0 or 1 (one error line), leave the previous output or a complete new one,
# and no temporaries.
enospc_each_write() {
  local target=$1; shift; shift
  local prev writes stride n rc err hit=0 runs=0 msg=""
  writes=$(strace -f -qq -c -e trace=write "$LLMQ" --threads 1 "$@" 2>&1 >/dev/null | awk '$NF=="write"{print $4}')
  [ -n "$writes" ] || { bad "${*:1:2}: could not count writes"; return; }
  stride=$(( writes > 40 ? writes / 40 : 1 ))
  for n in $(seq 1 "$stride" "$writes"); do
    prev=$(sum_dir "$target")
    err=$(strace -f -qq -o /dev/null -e trace=write -e inject=write:error=ENOSPC:when=$n "$LLMQ" --threads 1 "$@" 2>&1 >/dev/null); rc=$?
    runs=$((runs+1))
    if [ $rc -ne 0 ]; then
      hit=$((hit+1))
      [ $rc -eq 1 ] && [ "$(grep -c 'llmq: error' <<<"$err")" -eq 1 ] || { bad "${*:1:2}: ENOSPC at write $n: exit $rc: $(tail -2 <<<"$err")"; return; }
      # Unchanged, or (the failed write came after the swap: the summary line) the complete new one.
      [ "$(sum_dir "$target")" = "$prev" ] || [ -f "$target/.llmq-output.json" ] || { bad "${*:1:2}: ENOSPC at write $n broke the output"; return; }
      msg=$(grep -o 'error: .*' <<<"$err" | head -c 100)
    fi
    [ -z "$(leftovers "$target")" ] || { bad "${*:1:2}: ENOSPC at write $n left $(leftovers "$target")"; return; }
  done
  L "$@" >/dev/null 2>&1 && [ -f "$target/.llmq-output.json" ] || { bad "${*:1:2}: rerun failed"; return; }
  ok "${*:1:2}: ENOSPC at $runs of $writes writes ($hit failed cleanly, exit 1, previous output intact), no leftovers; e.g. $msg"
}

L quantize -m "$T/m" --scheme w4a16 --group 32 --out "$T/q" >/dev/null 2>&1 || bad "quantize"
kill_each_rename "$T/q" -- quantize -m "$T/m" --scheme w8a16 --out "$T/q"
L export -m "$T/m" --format gptq --type w4a16 --group 32 --out "$T/g" >/dev/null 2>&1 || bad "export gptq"
kill_each_rename "$T/g" -- export -m "$T/m" --format gptq --type w8a16 --out "$T/g"
kill_each_rename "$T/m" -- init --preset tiny --tokenizer "$T/tok" --out "$T/m" --dtype f32 --seed 7
L data prepare --tokenizer "$T/tok" --input "$T/text.txt" --out "$T/d" >/dev/null 2>&1 || bad "prepare"
kill_each_rename "$T/d" -- data prepare --tokenizer "$T/tok" --input "$T/text.txt" "$T/text.txt" --out "$T/d" --shard-tokens 20000
kill_each_rename "$T/tok" -- tokenizer train --input "$T/text.txt" --vocab 420 --out "$T/tok"

enospc_each_write "$T/q" -- quantize -m "$T/m" --scheme w8a16 --out "$T/q"
enospc_each_write "$T/g" -- export -m "$T/m" --format gptq --type w4a16 --group 32 --out "$T/g"
enospc_each_write "$T/m" -- init --preset tiny --tokenizer "$T/tok" --out "$T/m" --dtype f32 --seed 9
enospc_each_write "$T/d" -- data prepare --tokenizer "$T/tok" --input "$T/text.txt" --out "$T/d" --shard-tokens 30000
enospc_each_write "$T/tok" -- tokenizer train --input "$T/text.txt" --vocab 410 --out "$T/tok"

# Two writers to one output: the second is refused naming the first (its renames are slowed
# by strace so that it holds the lock), and the first's output is complete and loads.
( strace -f -qq -o /dev/null -e trace=rename -e inject=rename:delay_enter=1500000 "$LLMQ" --threads 1 quantize -m "$T/m" \
    --scheme w8a16 --group 32 --out "$T/q2" >/dev/null 2>"$T/first.err" ) & first=$!
for i in $(seq 100); do [ -d "$T/.q2.tmp."* ] 2>/dev/null && break; ls -a "$T" | grep -q '^\.q2\.tmp\.' && break; sleep 0.05; done
err=$(L quantize -m "$T/m" --scheme w8a16 --out "$T/q2" 2>&1 >/dev/null); rc=$?
wait $first; rc1=$?
[ $rc -eq 1 ] && grep -q "another llmq process (pid [0-9]* quantize) is writing it" <<<"$err" && [ $rc1 -eq 0 ] \
  && grep -q '"group_size": 32' "$T/q2/config.json" && L info "$T/q2" >/dev/null 2>&1 \
  && ok "second quantize into one output refused: $(grep -o 'another.*' <<<"$err" | head -c 80); the first's output complete" \
  || bad "two quantize writers: rc=$rc rc1=$rc1 $err; first: $(tail -1 "$T/first.err")"
L data prepare --tokenizer "$T/tok" --input "$T/text.txt" --out "$T/d3" >/dev/null 2>&1
"$LLMQ" --threads 1 train --preset tiny --data "$T/d3" --out "$T/busy" --steps 100000 --save-every 0 --batch 2 --seq-len 16 >/dev/null 2>"$T/busy.err" & first=$!
for i in $(seq 100); do grep -q "step " "$T/busy.err" 2>/dev/null && break; sleep 0.1; done
for extra in "" "--resume"; do
  err=$(L train --preset tiny --data "$T/d3" --out "$T/busy" --steps 10 --batch 2 --seq-len 16 $extra 2>&1 >/dev/null); rc=$?
  [ $rc -eq 1 ] && grep -q "another llmq process (pid $first train) is writing it" <<<"$err" \
    && ok "train ${extra:-(new)} beside a running train into one run directory: refused naming pid $first" || bad "two trains $extra: rc=$rc $err"
done
kill -INT $first; wait $first
[ -f "$T/busy/$(cat "$T/busy/latest" 2>/dev/null)/train_state.bin" ] && ok "...the running train saved its checkpoint at Ctrl-C" || bad "busy run lost"

# A full disk while replacing an output: one error, the previous output intact, nothing left.
prev=$(sum_dir "$T/q")
err=$(bash -c "ulimit -f 100; exec $LLMQ --threads 1 quantize -m $T/m --scheme w8a16 --keep lm_head --out $T/q" 2>&1 >/dev/null); rc=$?
[ $rc -ne 0 ] && [ "$(sum_dir "$T/q")" = "$prev" ] && [ -z "$(leftovers "$T/q")" ] \
  && ok "full disk (ulimit -f): exit $rc, previous output intact: $(head -c 120 <<<"$err")" \
  || bad "full disk: rc=$rc, changed=$([ "$(sum_dir "$T/q")" = "$prev" ] && echo no || echo yes), left=$(leftovers "$T/q")"

# A new train into a run directory with checkpoints is refused; --resume and --overwrite work.
L data prepare --tokenizer "$T/tok" --input "$T/text.txt" --out "$T/d" >/dev/null 2>&1 || bad "prepare for train"
L train --preset tiny --data "$T/d" --out "$T/run" --steps 4 --save-every 2 --batch 2 --seq-len 16 >/dev/null 2>&1 || bad "train"
before=$(sum_dir "$T/run")
err=$(L train --preset tiny --data "$T/d" --out "$T/run" --steps 2 --save-every 1 --keep 1 --batch 2 --seq-len 16 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && grep -q "holds an earlier run; give --resume" <<<"$err" && [ "$(sum_dir "$T/run")" = "$before" ] \
  && ok "train over an earlier run refused, run intact" || bad "train over an earlier run: rc=$rc $err"
L train --preset tiny --data "$T/d" --out "$T/run" --steps 2 --batch 2 --seq-len 16 --overwrite >/dev/null 2>&1 \
  && [ "$(cat "$T/run/latest")" = checkpoint-000002 ] && [ ! -d "$T/run/checkpoint-000004" ] \
  && ok "--overwrite starts the run again" || bad "--overwrite: $(ls "$T/run")"

echo "faults/outputs: $fails failure(s)"
[ $fails -eq 0 ]
