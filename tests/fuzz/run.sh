#!/usr/bin/env bash
# CI's fuzzing: builds the fuzz targets (clang, ASan + UBSan) and, for each target,
#  1. replays the regression corpus (tests/fuzz/corpus/TARGET: every past finding and the
#     hand-written seeds) and the generated seeds (seeds.sh) once each, then
#  2. runs a fixed number of mutations from a fixed seed per target.
# Same binary, same inputs, same seed, no ASLR: the same executions, so a CI run fails only when a
# change breaks something. Allocations out of proportion to a 64 KB input are findings
# (-malloc_limit_mb for one allocation, -rss_limit_mb for the process), as are inputs that
# take longer than -timeout seconds. Random-seed campaigns: tests/fuzz/campaign.sh.
# usage: tests/fuzz/run.sh [RUNS_PERCENT]   (100 = the table below, ~2-4 min in all here)
set -euo pipefail
cd "$(dirname "$0")/../.."
pct=${1:-100}
targets=(safetensors config tokenizer_files tokenizer_encode text_formats gguf checkpoint serve_request stage_message)
# Mutation runs per target: about 20-40 s each under ASan on a 2-core machine.
declare -A runs=([safetensors]=400000 [config]=300000 [tokenizer_files]=100000 [tokenizer_encode]=100000
                 [text_formats]=15000 [gguf]=40000 [checkpoint]=400000 [serve_request]=100000 [stage_message]=200000)
# Longest input: 64 KB, but whole GGUF seeds (a one-block model) are larger.
declare -A max_len=([gguf]=262144)
# A fixed seed per target (any number: changing one changes which inputs CI tries).
declare -A seed=([safetensors]=101 [config]=102 [tokenizer_files]=103 [tokenizer_encode]=104
                 [text_formats]=105 [gguf]=106 [checkpoint]=107 [serve_request]=108 [stage_message]=109)
cmake --preset fuzz >/dev/null
# Build output only on failure (ninja prints the failing command and the compiler's error).
cmake --build build-fuzz --target "${targets[@]/#/fuzz_}" > build-fuzz.log 2>&1 || { cat build-fuzz.log; exit 1; }
gen=build-fuzz/seeds work=build-fuzz/corpus findings=build-fuzz/findings
rm -rf "$gen" "$work" "$findings"; mkdir -p "$findings"
# Seeds come from the release build when there is one (scripts/test builds it first; the same
# code writes the same bytes), else from the instrumented one.
seeder=./build/llmq; [ -x "$seeder" ] || { cmake --build build-fuzz --target llmq > build-fuzz.log 2>&1 || { cat build-fuzz.log; exit 1; }; seeder=./build-fuzz/llmq; }
tests/fuzz/seeds.sh "$seeder" "$gen"
export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
common=(-rss_limit_mb=1024 -malloc_limit_mb=64 -timeout=10 -reload=0 -print_final_stats=1)
# Determinism: -reload=0 (libFuzzer rereads the corpus directory on a timer by default) and
# no address-space randomisation (setarch -R: some code paths depend on where allocations
# land, which changed the coverage libFuzzer sees and so the inputs it tries next).
norand=(setarch "$(uname -m)" -R)
failed=0
for t in "${targets[@]}"; do
  bin=./build-fuzz/tests/fuzz/fuzz_$t
  mkdir -p "$work/$t"
  cp tests/fuzz/corpus/$t/* "$gen/$t"/* "$work/$t"/ 2>/dev/null || true
  n=$(( ${runs[$t]} * pct / 100 ))
  echo "fuzzing $t: $(ls "$work/$t" | wc -l) corpus inputs, then $n runs from seed ${seed[$t]}"
  # Replay: each input of the corpus once (no mutations); then the seeded mutation run. The
  # mutation run writes new inputs into the work copy, never into the checked-in corpus.
  for phase in replay mutate; do
    if [ $phase = replay ]; then extra=(-runs=0); else extra=(-runs="$n" -seed="${seed[$t]}"); fi
    set +e
    "${norand[@]}" "$bin" "${common[@]}" -max_len="${max_len[$t]:-65536}" "${extra[@]}" -artifact_prefix="$findings/$t-" "$work/$t" > "$findings/$t-$phase.log" 2>&1
    rc=$?
    set -e
    grep -E "^stat::number_of_executed_units|^SUMMARY" "$findings/$t-$phase.log" | sed "s/^/  $phase: /" || true
    if [ $rc -ne 0 ] || compgen -G "$findings/$t-*-*" >/dev/null; then
      echo "fuzz_$t found a bug in the $phase phase (exit $rc): $(ls "$findings" | grep -v '\.log$' | tr '\n' ' ')"
      grep -E "ERROR|==[0-9]+==|^    #[0-9]+ " "$findings/$t-$phase.log" | head -30
      echo "reproduce: $bin ${common[*]} -max_len=${max_len[$t]:-65536} FILE; add the file to tests/fuzz/corpus/$t/ once fixed"
      failed=1
      break
    fi
  done
done
[ $failed -eq 0 ] || exit 1
echo "fuzzing: no findings"
