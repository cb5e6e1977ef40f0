#!/usr/bin/env bash
# Bad input to the llmq program: each case must exit non-zero (not by a signal), within a
# timeout, with one "llmq: error:" line on stderr naming the problem. --help must work on
# every command.
set -u
LLMQ=${1:?usage: bad_input.sh path/to/llmq}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0

expect_error() {  # expect_error NEEDLE -- ARGS...
  local needle=$1; shift; shift
  local err rc
  err=$(timeout 60 "$LLMQ" "$@" 2>&1 >/dev/null); rc=$?
  if [ $rc -eq 0 ] || [ $rc -ge 124 ]; then
    echo "FAIL (rc=$rc, want 1): llmq $*"; echo "  $err"; fails=$((fails+1)); return
  fi
  if ! grep -qF -- "$needle" <<<"$err"; then
    echo "FAIL (message lacks '$needle'): llmq $*"; echo "  $err"; fails=$((fails+1)); return
  fi
  if [ "$(grep -c 'llmq: error:' <<<"$err")" != 1 ] && [ "$needle" != "--" ]; then
    echo "FAIL (not exactly one error line): llmq $*"; echo "  $err"; fails=$((fails+1)); return
  fi
  local args="$*"
  echo "ok: llmq ${args:0:100} -> $(head -c 150 <<<"$err")"
}

for c in "" info init generate eval "eval ppl" bench "bench serve" serve; do
  timeout 20 "$LLMQ" $c --help >/dev/null 2>&1 || { echo "FAIL: llmq $c --help"; fails=$((fails+1)); }
done

"$LLMQ" init --preset tiny --out "$T/m" --dtype f32 >/dev/null 2>&1 || { echo "FAIL: init"; exit 1; }
cp -r "$T/m" "$T/trunc"; truncate -s -100 "$T/trunc/model.safetensors"
cp -r "$T/m" "$T/badjson"; echo '{"hidden_size": 64,' > "$T/badjson/config.json"
cp -r "$T/m" "$T/shape"; sed -i 's/"intermediate_size": [0-9]*/"intermediate_size": 100/' "$T/shape/config.json"
cp -r "$T/m" "$T/garbage"; head -c 4096 /dev/urandom > "$T/garbage/model.safetensors"
cp -r "$T/m" "$T/empty"; : > "$T/empty/model.safetensors"
cp -r "$T/m" "$T/ropetype"; sed -i 's/"rope_scaling": null/"rope_scaling": {"rope_type": 5, "factor": 8}/' "$T/ropetype/config.json"
echo "1 2 3 hello" > "$T/badtok.txt"
echo "1 2 3 999999" > "$T/oov.txt"
: > "$T/none.txt"
seq 1 300 | tr '\n' ' ' > "$T/long.txt"

expect_error "not a directory" -- generate -m "$T/nope" -p "1 2"
expect_error "truncated" -- generate -m "$T/trunc" -p "1 2"
expect_error "malformed JSON" -- generate -m "$T/badjson" -p "1 2"
expect_error "has shape" -- generate -m "$T/shape" -p "1 2"
expect_error "model.safetensors" -- generate -m "$T/garbage" -p "1 2"
expect_error "truncated" -- generate -m "$T/empty" -p "1 2"
expect_error "config.json: a field has the wrong JSON type" -- info "$T/ropetype"
expect_error "outside the vocabulary" -- generate -m "$T/m" -p "1 99999"
expect_error "expected token ids" -- generate -m "$T/m" -p "hello world"
expect_error "longer than the context" -- generate -m "$T/m" -p "$(cat "$T/long.txt")" -n 1
expect_error "is empty" -- generate -m "$T/m" -p " "
expect_error "expected token ids" -- eval ppl -m "$T/m" --tokens "$T/badtok.txt"
expect_error "outside the vocabulary" -- eval ppl -m "$T/m" --tokens "$T/oov.txt"
expect_error "at least 2 tokens" -- eval ppl -m "$T/m" --tokens "$T/none.txt"
expect_error "exceeds the model's context" -- eval ppl -m "$T/m" --tokens "$T/long.txt" --ctx 100000
expect_error "cannot open" -- eval ppl -m "$T/m" --tokens "$T/missing.txt"
expect_error "unknown preset" -- info --preset llama9
expect_error "unknown preset" -- init --preset llama9 --out "$T/x"
expect_error "exceeds the model's context" -- bench -m "$T/m" --prompt 200 --gen 100
expect_error "give a model directory" -- info
expect_error "--" -- generate
expect_error "--" -- bogus-command
expect_error "choose w4a16 or w8a16" -- export -m "$T/m" --format gptq --type q4_0 --out "$T/g"
expect_error "not supported (gguf, gguf-lora, gptq or hf)" -- export -m "$T/m" --format onnx --out "$T/g"
expect_error "not a training checkpoint" -- export -m "$T/m" --format hf --out "$T/hf"
expect_error "choose bf16, f16 or f32" -- export -m "$T/m" --format hf --type q4_0 --out "$T/hf"
expect_error "is not supported (f32, f16, q8_0, q4_0, q2_k" -- export -m "$T/m" --type q4_k_x --out "$T/k.gguf"
expect_error "choose channel or tensor" -- quantize -m "$T/m" --scheme fp8 --weight-scale row --out "$T/f"
expect_error "give --calib" -- quantize -m "$T/m" --method gptq --group 32 --out "$T/f"
expect_error "no such calibration file" -- quantize -m "$T/m" --method awq --group 32 --calib "$T/missing.txt" --out "$T/f"
expect_error "use --scheme w8a8" -- quantize -m "$T/m" --method smoothquant --scheme w4a16 --out "$T/f"
expect_error "unknown method" -- quantize -m "$T/m" --method sparsegpt --out "$T/f"
# Recipes (issue 28): one error naming the rule and the tensor (tiny: dim 64, ffn 192).
expect_error "rule 'mlp=w4a16:g128'" -- quantize -m "$T/m" --group 32 --mix 'mlp=w4a16:g128' --out "$T/f"
expect_error "unknown option 'g1x'" -- quantize -m "$T/m" --mix 'mlp=w4a16:g1x' --out "$T/f"
expect_error "hqq with symmetric codes" -- quantize -m "$T/m" --mix 'mlp=w4a16:g32:hqq:sym' --out "$T/f"
expect_error "apply to a whole model" -- quantize -m "$T/m" --mix 'mlp=fp8' --out "$T/f"
echo '{"rules": [{"match": "mlp", "bits": 2}]}' > "$T/recipe.json"
expect_error "recipe.json: rules[0]: unknown key \"bits\"" -- quantize -m "$T/m" --recipe "$T/recipe.json" --out "$T/f"
expect_error "leave out --out" -- quantize -m "$T/m" --sensitivity --calib "$T/long.txt" --out "$T/f"
expect_error "int8 or fp8 (calibrated static scales)" -- quantize -m "$T/m" --kv-cache int2 --calib "$T/long.txt" --out "$T/f"
expect_error "--kv-cache fp8" -- quantize -m "$T/m" --scheme w8a16 --kv-cache fp8 --out "$T/f"
expect_error "no calibrated KV-cache scales" -- eval ppl -m "$T/m" --tokens "$T/long.txt" --kv-cache int8 --kv-scales static
expect_error "--kv-cache" -- generate -m "$T/m" -p "1 2" --kv-cache int2
printf '{"text": "a"}\nnot json\n' > "$T/bad.jsonl"
expect_error "bad.jsonl:2" -- quantize -m "$T/m" --method gptq --group 32 --calib "$T/bad.jsonl" --out "$T/f"
"$LLMQ" export -m "$T/m" --format gptq --type w8a16 --out "$T/gptq" --json >/dev/null 2>&1 &&
  grep -q '"quant_method": "gptq"' "$T/gptq/config.json" || { echo "FAIL: export --format gptq"; fails=$((fails+1)); }

# Fine-tuning and adapters (issue 22): bad options and adapters that do not fit.
mkdir -p "$T/ftdata"
printf '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n{"text": "x"}\n' > "$T/chat.jsonl"
expect_error "chat.jsonl:2: no \"messages\" list" -- data prepare --tokenizer "$(dirname "$0")/../../models/llama3-tokenizer" --input "$T/chat.jsonl" --format chat --out "$T/chat"
expect_error "alpha 0" -- finetune -m "$T/m" --data "$T/ftdata" --out "$T/ft" --alpha 0
expect_error "unknown target module 'attn'" -- finetune -m "$T/m" --data "$T/ftdata" --out "$T/ft" --targets q_proj,attn
expect_error "unknown base quantization 'nf3'" -- finetune -m "$T/m" --data "$T/ftdata" --out "$T/ft" --quantize-base nf3
# A job beyond the machine (a 405B-shaped base, no weights needed: refused before they are read).
mkdir -p "$T/huge"
printf '{"model_type": "llama", "hidden_size": 16384, "intermediate_size": 53248, "num_hidden_layers": 126, "num_attention_heads": 128, "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "bos_token_id": 128000, "eos_token_id": 128001}' > "$T/huge/config.json"
printf 'Some words to make a few tokens of training data from, enough for one window.\n' > "$T/words.txt"
"$LLMQ" data prepare --tokenizer "$(dirname "$0")/../../models/llama3-tokenizer" --input "$T/words.txt" --out "$T/wdata" >/dev/null 2>&1
expect_error "finetune: the job needs about" -- finetune -m "$T/huge" --data "$T/wdata" --out "$T/ftbig" --seq-len 8 --batch 1 --quantize-base hqq4
mkdir -p "$T/ad"
printf '{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}' > "$T/ad/adapter_config.json"
expect_error "adapter_model.safetensors: missing" -- generate -m "$T/m" -p "1 2" --adapter "$T/ad"
printf '{"peft_type": "PROMPT_TUNING"}' > "$T/ad/adapter_config.json"
expect_error "is not LORA" -- eval ppl -m "$T/m" --tokens "$T/long.txt" --adapter "$T/ad"
expect_error "adapter_config.json: missing" -- bench -m "$T/m" --prompt 4 --gen 1 --adapter "$T/ftdata"

# llmq serve / bench serve: bad options and models fail before or right after listening.
expect_error "not a directory" -- serve -m "$T/nope" --port 0
expect_error "exceeds the model's context" -- serve -m "$T/m" --port 0 --ctx 100000
expect_error "expected NAME=DIR" -- serve -m "$T/m" --port 0 --adapter justaname
expect_error "not both" -- serve -m "$T/m" --port 0 --api-key a --api-key-file "$T/m/config.json"
echo > "$T/emptykey"
expect_error "API key file is empty" -- serve -m "$T/m" --port 0 --api-key-file "$T/emptykey"
expect_error "cannot hold one sequence" -- serve -m "$T/m" --port 0 --ctx 64 --kv-blocks 2
expect_error "cannot connect" -- bench serve --url http://127.0.0.1:9 --requests 1
expect_error "only http://" -- bench serve --url https://example.com
expect_error "give -m MODEL" -- bench

if [ $fails -ne 0 ]; then echo "$fails failure(s)"; exit 1; fi
echo "all bad-input cases handled"
