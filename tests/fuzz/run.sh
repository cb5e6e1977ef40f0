#!/usr/bin/env bash
# Builds the fuzz targets (clang, ASan + UBSan) and runs each for a few seconds from a seed
# corpus of valid files. usage: tests/fuzz/run.sh [seconds per target, default 30]
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-30}
cmake --preset fuzz >/dev/null
# Build output only on failure (ninja prints the failing command and the compiler's error).
cmake --build build-fuzz --target fuzz_safetensors fuzz_config fuzz_tokenizer_files fuzz_tokenizer_encode fuzz_text_formats fuzz_gguf fuzz_checkpoint llmq > build-fuzz.log 2>&1 || { cat build-fuzz.log; exit 1; }
work=build-fuzz/corpus
rm -rf "$work"; mkdir -p "$work/safetensors" "$work/config" "$work/tokenizer_files" "$work/tokenizer_encode" "$work/text_formats" "$work/gguf" "$work/checkpoint"
# Seeds: a real model directory's files and a Meta params.json.
./build-fuzz/llmq init --preset tiny-tied --out "$work/model" --dtype bf16 >/dev/null 2>&1
head -c 4096 "$work/model/model.safetensors" > "$work/safetensors/head"
printf '\x10\x00\x00\x00\x00\x00\x00\x00{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}    ' > "$work/safetensors/small"
cp "$work/model/config.json" "$work/config/hf.json"
# A quantized config with calibrated KV-cache scales (quantization_config.kv_cache_scheme).
/usr/bin/python3 -c "import json,sys; c=json.load(open(sys.argv[1])); c['quantization_config']={'quant_method':'gptq','bits':4,'group_size':32,'sym':False,'kv_cache_scheme':{'num_bits':8,'type':'float','strategy':'attn_head','dynamic':False}}; print(json.dumps(c))" "$work/model/config.json" > "$work/config/hf_kv.json"
/usr/bin/python3 -c "import json,sys; c=json.load(open(sys.argv[1])); c['quantization_config']={'quant_method':'hqq','checkpoint_format':'llmq','bits':4,'group_size':64,'axis':0,'sym':False}; print(json.dumps(c))" "$work/model/config.json" > "$work/config/hf_hqq0.json"
echo '{"dim": 4096, "ffn_dim_multiplier": 1.3, "multiple_of": 1024, "n_heads": 32, "n_kv_heads": 8, "n_layers": 32, "norm_eps": 1e-05, "rope_theta": 500000.0, "use_scaled_rope": true, "vocab_size": 128256}' > "$work/config/meta.json"
# Tokenizer seeds: a small byte-level tokenizer.json (all 256 bytes plus a merge), the head of
# the real tiktoken file, and real text with special tokens and multi-byte characters.
/usr/bin/python3 - "$work/tokenizer_files/small.json" <<'PY'
import json, sys
bs = [b for b in range(33, 127)] + [b for b in range(0xA1, 0xAD)] + [b for b in range(0xAE, 0x100)]
cps, n = {}, 0
for b in range(256):
    cps[b] = b if b in bs else 256 + n; n += 0 if b in bs else 1
vocab = {chr(cps[b]): b for b in range(256)}; vocab["ab"] = 256
tok = {"model": {"type": "BPE", "vocab": vocab, "merges": ["a b"], "ignore_merges": True},
       "pre_tokenizer": {"type": "ByteLevel"}, "added_tokens": [{"id": 257, "content": "<|eot_id|>", "special": True}]}
open(sys.argv[1], "w").write("\x01" + json.dumps(tok))
PY
{ printf '\x00'; head -c 3000 models/llama3-tiktoken/tokenizer.model; } > "$work/tokenizer_files/tiktoken"
head -c 2000 data/text/moby_dick.txt > "$work/tokenizer_encode/moby"
printf '\x01<|start_header_id|>user<|end_header_id|>\n\n日本語 🎉 12345  x\xff' > "$work/tokenizer_encode/special"
# Text-format seeds: a real shard manifest and the Llama 3 chat template.
printf 'one\ntwo\n' > "$work/in.txt"
./build-fuzz/llmq data prepare --tokenizer models/llama3-tokenizer --input "$work/in.txt" --out "$work/shards" --json >/dev/null 2>&1
{ printf '\x00'; cat "$work/shards/manifest.json"; } > "$work/text_formats/manifest"
{ printf '\x01'; /usr/bin/python3 -c "import json; print(json.load(open('models/llama3-tokenizer/tokenizer_config.json'))['chat_template'], end='')"; } > "$work/text_formats/llama3_template"
printf '\x01{%% for m in messages %%}{{ loop.index ~ m.role | upper }}{%% if m.content | trim %%}{{ m.content[1:] }}{%% endif %%}{%% endfor %%}' > "$work/text_formats/template2"
# GGUF seeds: a tiny model with a small SentencePiece vocabulary, as f32 and q4_0 files.
head -c 60000 data/text/web.txt > "$work/spm_in.txt"
./build-fuzz/llmq tokenizer train --input "$work/spm_in.txt" --vocab 500 --out "$work/spm" >/dev/null 2>&1
./build-fuzz/llmq init --preset tiny --tokenizer "$work/spm" --out "$work/gmodel" --dtype f32 >/dev/null 2>&1
./build-fuzz/llmq export -m "$work/gmodel" --type q4_0 --out "$work/gguf/q4.gguf" >/dev/null 2>&1
./build-fuzz/llmq export -m "$work/gmodel" --type f32 --out "$work/gguf/f32.gguf" >/dev/null 2>&1
# Checkpoint seeds: the sharded_state.json and train_state.bin headers the trainer writes, for
# the fuzz target's 1000-parameter model (two units over 3 ranks).
printf '\x00{"format":"llmq-sharded-1","world_size":3,"n_params":1000,"step":10,"cursor":40,"adam_step":10,"options":{"lr":0.001,"batch":4},"units":[[0,400,134],[400,1000,200]]}' > "$work/checkpoint/sharded"
printf '\x01{"step":10,"cursor":40,"adam_step":10,"n_params":1000,"options":{"lr":0.001,"threads":2}}' > "$work/checkpoint/full"
for t in safetensors config tokenizer_files tokenizer_encode text_formats gguf checkpoint; do
  echo "fuzzing $t for ${secs}s"
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ./build-fuzz/tests/fuzz/fuzz_$t -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 \
    -print_final_stats=1 "$work/$t" 2>&1 | grep -E "^(stat::number_of_executed_units|ERROR|SUMMARY)|Done" || true
  # libFuzzer exits non-zero and writes crash-* on a finding.
  # (compgen, not ls: ls fails when any one of the patterns matches nothing.)
  if compgen -G "crash-*" >/dev/null || compgen -G "leak-*" >/dev/null || compgen -G "timeout-*" >/dev/null || compgen -G "oom-*" >/dev/null; then
    echo "fuzz_$t found a bug: $(ls crash-* leak-* timeout-* oom-* 2>/dev/null)"; exit 1
  fi
done
echo "fuzzing: no findings"
