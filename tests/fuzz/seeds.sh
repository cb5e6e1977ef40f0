#!/usr/bin/env bash
# Writes the fuzz seeds that come from a built llmq and the fetched data (a model directory's
# files, GGUF exports, the real tiktoken file's head, the Llama 3 chat template) into
# OUT/<target>/. Every command here is deterministic (fixed seeds, one thread), so the seeds
# are the same bytes on every machine; the hand-written seeds and every past finding are
# checked in under tests/fuzz/corpus/. usage: tests/fuzz/seeds.sh LLMQ OUT
set -euo pipefail
cd "$(dirname "$0")/../.."
llmq=$1 out=$2
for t in safetensors config tokenizer_files tokenizer_encode text_formats gguf checkpoint serve_request stage_message; do mkdir -p "$out/$t"; done
tmp=$out/.work; rm -rf "$tmp"; mkdir -p "$tmp"
L() { "$llmq" --threads 1 "$@" >/dev/null 2>"$tmp/err" || { echo "seeds.sh: llmq $*:"; cat "$tmp/err"; exit 1; }; }
# A real model directory's files and a Meta params.json.
L init --preset tiny-tied --out "$tmp/model" --dtype bf16
head -c 4096 "$tmp/model/model.safetensors" > "$out/safetensors/gen-head"
cp "$tmp/model/config.json" "$out/config/gen-hf.json"
# Quantized configs: calibrated KV-cache scales, and llmq's HQQ layout along axis 0.
/usr/bin/python3 - "$tmp/model/config.json" "$out/config" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c['quantization_config'] = {'quant_method': 'gptq', 'bits': 4, 'group_size': 32, 'sym': False,
    'kv_cache_scheme': {'num_bits': 8, 'type': 'float', 'strategy': 'attn_head', 'dynamic': False}}
open(sys.argv[2] + '/gen-hf_kv.json', 'w').write(json.dumps(c))
c['quantization_config'] = {'quant_method': 'hqq', 'checkpoint_format': 'llmq', 'bits': 4, 'group_size': 64, 'axis': 0, 'sym': False}
open(sys.argv[2] + '/gen-hf_hqq0.json', 'w').write(json.dumps(c))
PY
# Tokenizer files: a small byte-level tokenizer.json (all 256 bytes plus a merge) and the head
# of the real tiktoken file; first byte 1 = tokenizer.json, 0 = tiktoken, 2 = SentencePiece.
/usr/bin/python3 - "$out/tokenizer_files/gen-small.json" <<'PY'
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
{ printf '\x00'; head -c 3000 models/llama3-tiktoken/tokenizer.model; } > "$out/tokenizer_files/gen-tiktoken"
head -c 60000 data/text/web.txt > "$tmp/spm_in.txt"
L tokenizer train --input "$tmp/spm_in.txt" --vocab 400 --out "$tmp/spm400"
{ printf '\x02'; cat "$tmp/spm400/tokenizer.model"; } > "$out/tokenizer_files/gen-spm400"
head -c 2000 data/text/moby_dick.txt > "$out/tokenizer_encode/gen-moby"
# Text formats: a real shard manifest (first byte 0) and the Llama 3 chat template (1).
printf 'one\ntwo\n' > "$tmp/in.txt"
L data prepare --tokenizer models/llama3-tokenizer --input "$tmp/in.txt" --out "$tmp/shards"
{ printf '\x00'; cat "$tmp/shards/manifest.json"; } > "$out/text_formats/gen-manifest"
{ printf '\x03'; printf '%s\n' '{"context": "The cat", "choices": [" sat.", " ran."], "answer": 0, "task": "c"}' \
  '{"prompt": "Once upon a", "answer": " time"}'; } > "$out/text_formats/gen-tasks"
{ printf '\x03'; printf '%s\n' '{"doc_id": 0, "target": 1, "arguments": {"gen_args_0": {"arg_0": "a", "arg_1": " b"}, "gen_args_1": {"arg_0": "a", "arg_1": " c"}}}' \
  '{"doc_id": 1, "target": " c", "arguments": [["a", " b"], ["a", " c"]]}' \
  '{"doc_id": 2, "target": "x", "arguments": {"gen_args_0": {"arg_0": "q", "arg_1": {"until": ["\n"]}}}}'; } > "$out/text_formats/gen-harness-tasks"
{ printf '\x01'; /usr/bin/python3 -c "import json; print(json.load(open('models/llama3-tokenizer/tokenizer_config.json'))['chat_template'], end='')"; } > "$out/text_formats/gen-llama3_template"
# GGUF: a one-block tiny model with a small SentencePiece vocabulary, as f16, q4_0 and q4_k_m files
# (~100 KB and ~40 KB: run.sh lets gguf inputs grow to 256 KB so that whole files are seeds).
L init --preset tiny --layers 1 --tokenizer "$tmp/spm400" --out "$tmp/gmodel" --dtype f32
L export -m "$tmp/gmodel" --type q4_0 --out "$out/gguf/gen-q4.gguf"
L export -m "$tmp/gmodel" --type f16 --out "$out/gguf/gen-f16.gguf"
L export -m "$tmp/gmodel" --type q4_k_m --out "$out/gguf/gen-q4km.gguf"  # ffn_down Q6_K, the rest its fallbacks
rm -rf "$tmp"
