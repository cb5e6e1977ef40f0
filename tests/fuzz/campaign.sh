#!/usr/bin/env bash
# A fuzzing campaign (not run by CI): one target for MINUTES with a random seed, starting from
# the regression corpus and the generated seeds, keeping what it learns in
# build-fuzz/campaign/TARGET (so a second campaign continues where the first stopped).
# Findings land in build-fuzz/campaign/findings/; fix each, then copy the input into
# tests/fuzz/corpus/TARGET/ as regress-<what> so CI replays it from then on.
# usage: tests/fuzz/campaign.sh TARGET MINUTES [JOBS]
#   TARGET: safetensors config tokenizer_files tokenizer_encode text_formats gguf checkpoint
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 2 ] || { sed -n 2,8p "$0"; exit 2; }
t=$1 minutes=$2 jobs=${3:-1}
bin=./build-fuzz/tests/fuzz/fuzz_$t
[ -d tests/fuzz/corpus/$t ] || { echo "campaign.sh: unknown target $t"; exit 2; }
# Builds the target unless it exists (CAMPAIGN_REBUILD=1 forces it), so a long campaign is not
# held up by rebuilding the instrumented library after unrelated edits.
if [ ! -x "$bin" ] || [ "${CAMPAIGN_REBUILD:-0}" = 1 ]; then
  cmake --preset fuzz >/dev/null
  cmake --build build-fuzz --target fuzz_$t llmq > build-fuzz.log 2>&1 || { cat build-fuzz.log; exit 1; }
fi
dir=build-fuzz/campaign/$t findings=build-fuzz/campaign/findings
mkdir -p "$dir" "$findings"
[ -d build-fuzz/seeds/$t ] || tests/fuzz/seeds.sh ./build-fuzz/llmq build-fuzz/seeds
cp -n tests/fuzz/corpus/$t/* build-fuzz/seeds/$t/* "$dir"/ 2>/dev/null || true
s=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
echo "campaign $t: ${minutes} min, seed $s, corpus $dir ($(ls "$dir" | wc -l) inputs)"
export ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
before=$(ls "$findings" | wc -l)
set +e
ml=65536; [ "$t" = gguf ] && ml=262144  # as run.sh: whole one-block GGUF models are seeds
"$bin" -max_len=$ml -rss_limit_mb=1024 -malloc_limit_mb=64 -timeout=10 -seed="$s" \
  -max_total_time=$((minutes * 60)) $([ "$jobs" -gt 1 ] && echo "-jobs=$jobs -workers=$jobs") -print_final_stats=1 \
  -artifact_prefix="$findings/$t-" "$dir" > "$findings/$t-$s.log" 2>&1
rc=$?
set -e
grep -E "^stat::number_of_executed_units|^SUMMARY|^#[0-9]+.*DONE" "$findings/$t-$s.log" | tail -3 || true
echo "campaign $t: exit $rc, corpus now $(ls "$dir" | wc -l) inputs, findings: $(( $(ls "$findings" | wc -l) - before - 1 ))"
ls -t "$findings" | grep "^$t-" | grep -v '\.log$' | head || true
