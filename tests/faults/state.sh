#!/usr/bin/env bash
# Damaged inputs and state that used to be accepted (issue 30): an out-of-vocabulary id in a
# shard is found when the shards are opened, not when its window is drawn; a config's bad
# torch_dtype names the file; GGUF tensors that overlap are refused (parser_bounds_test);
# NaN/Inf weights and AdamW moments, truncated tiktoken files, lying quantization labels and
# sizes beyond the machine each end in one clear error.
set -u
LLMQ=${1:?usage: state.sh path/to/llmq}
source "$(dirname "$0")/../lib.sh"

head -c 100000 "$ROOT/data/text/web.txt" > "$T/text.txt"
L tokenizer train --input "$T/text.txt" --vocab 400 --out "$T/tok" >/dev/null 2>&1 || { bad "tokenizer train"; exit 1; }
L init --preset tiny --tokenizer "$T/tok" --out "$T/m" --dtype f32 >/dev/null 2>&1 || { bad "init"; exit 1; }
L data prepare --tokenizer "$T/tok" --input "$T/text.txt" --out "$T/d" >/dev/null 2>&1 || { bad "prepare"; exit 1; }

# Item 10: one id past the vocabulary near the end of the shard; a 1-step run would draw
# windows elsewhere and never see it, so only a check at open finds it.
cp -r "$T/d" "$T/bad"; rm -f "$T/bad/.llmq-output.json"
n=$(stat -c %s "$T/bad/train_000000.bin")
printf '\xe7\x03\x00\x00' | dd of="$T/bad/train_000000.bin" bs=1 seek=$((n - 8)) conv=notrunc 2>/dev/null  # id 999
err=$(L train -m "$T/m" --data "$T/bad" --out "$T/run" --steps 1 --batch 1 --seq-len 16 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && grep -q "token id 999 at position" <<<"$err" && ok "out-of-vocabulary id found at open: $(grep error <<<"$err")" \
  || bad "out-of-vocabulary id: rc=$rc $(tail -2 <<<"$err")"

# Item 13: a bad torch_dtype names the file.
cp -r "$T/m" "$T/m8"; sed -i 's/"torch_dtype": "[a-z0-9]*"/"torch_dtype": "int8"/' "$T/m8/config.json"
err=$(L info "$T/m8" 2>&1); grep -q "config.json: torch_dtype: unknown dtype 'int8'" <<<"$err" && ok "torch_dtype error names the file" \
  || bad "torch_dtype: $err"

# Item 6: a failed metrics append (file-size limit standing in for a full disk) stops the run
# with a clear message at that step; a torn last row is said by report and dropped on resume.
err=$(bash -c "ulimit -f 2; exec $LLMQ --threads 1 train -m $T/m --data $T/d --out $T/full --steps 60 --log-every 1 --save-every 0 --batch 1 --seq-len 16 --sample-tokens 0" 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && grep -q "writing the metrics failed at step" <<<"$err" && ok "metrics write failure stops the run: $(grep error <<<"$err" | head -c 150)" \
  || bad "metrics write failure: rc=$rc $(tail -2 <<<"$err")"
L train -m "$T/m" --data "$T/d" --out "$T/torn" --steps 4 --save-every 2 --batch 1 --seq-len 16 >/dev/null 2>&1 || bad "train torn"
printf '{"step": 5, "loss": 3.' >> "$T/torn/metrics.jsonl"
L report "$T/torn" 2>&1 | grep -q "warning: .*skipped 1 unreadable line" && ok "report says the torn line" || bad "report on a torn file"
L train -m "$T/m" --data "$T/d" --out "$T/torn" --steps 6 --save-every 2 --batch 1 --seq-len 16 --resume 2>&1 >/dev/null \
  | grep -q "dropped 1 unreadable (torn) line" && ok "resume drops the torn line, said" || bad "resume on a torn file"

# Item 9: a train_state.bin whose step or cursor does not fit its run is refused, not resumed
# as "nothing to train" (same-length edits of the JSON header).
L train -m "$T/m" --data "$T/d" --out "$T/cs" --steps 4 --save-every 2 --batch 1 --seq-len 16 --keep 1 >/dev/null 2>&1 || bad "train cs"
st="$T/cs/checkpoint-000004/train_state.bin"; cp "$st" "$T/st.bak"
sed -i 's/"step":4}/"step":9}/' "$st"
err=$(L train -m "$T/m" --data "$T/d" --out "$T/cs" --steps 4 --save-every 2 --batch 1 --seq-len 16 --keep 1 --resume 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && grep -q "says step 9, which is not this checkpoint's step" <<<"$err" && ok "corrupt step refused" || bad "corrupt step: rc=$rc $err"
cp "$T/st.bak" "$st"; sed -i 's/"cursor":4,/"cursor":7,/' "$st"
err=$(L train -m "$T/m" --data "$T/d" --out "$T/cs" --steps 6 --save-every 2 --batch 1 --seq-len 16 --keep 1 --resume 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && grep -q "data cursor 7 is not step 4" <<<"$err" && ok "corrupt cursor refused" || bad "corrupt cursor: rc=$rc $err"

# poke FILE TENSOR INDEX VALUE: sets one element of a safetensors tensor (f32/bf16/f16) in place.
poke() {
  /usr/bin/python3 - "$@" <<'PY'
import json, struct, sys
path, name, idx, val = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
with open(path, 'r+b') as f:
    n = struct.unpack('<Q', f.read(8))[0]
    e = json.loads(f.read(n))[name]
    fmt, size = {'F32': ('<f', 4), 'F16': ('<e', 2)}.get(e['dtype'], (None, 2))
    f.seek(8 + n + e['data_offsets'][0] + idx * size)
    f.write(struct.pack(fmt, val) if fmt else struct.pack('<f', val)[2:])  # bf16: top half of f32
PY
}

# Item 5: a NaN in a weight is refused by every command that loads the model, naming the
# tensor, row and column (before: generate printed "######", eval ppl "perplexity -nan",
# quantize copied NaN norms through, export wrote a GGUF that llmq then refused).
echo "the quick brown fox" > "$T/p.txt"
cp -r "$T/m" "$T/nan"; poke "$T/nan/model.safetensors" model.norm.weight 5 nan
cp -r "$T/m" "$T/inf"; poke "$T/inf/model.safetensors" model.layers.1.mlp.up_proj.weight 70 inf
for args in "generate -m $T/nan -p hello -n 4" "eval ppl -m $T/nan --text $T/p.txt" \
            "quantize -m $T/nan --scheme w8a16 --out $T/qnan" "export -m $T/nan --format gguf --type q8_0 --out $T/nan.gguf" \
            "train --model $T/nan --data $T/d --out $T/rnan --steps 1 --batch 1 --seq-len 16"; do
  err=$(L $args 2>&1 >/dev/null); rc=$?
  [ $rc -eq 1 ] && grep -Eq "model.norm.weight'? .*(non-finite|nan)" <<<"$err" \
    && ok "NaN norm refused by ${args%% -*}" || bad "NaN norm, ${args%% -*}: rc=$rc $(tail -1 <<<"$err")"
done
[ ! -e "$T/qnan" ] && [ ! -e "$T/nan.gguf" ] && ok "nothing written from a NaN model" || bad "outputs written from a NaN model"
err=$(L eval ppl -m "$T/inf" --text "$T/p.txt" 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && grep -q "up_proj.weight' holds a non-finite value (NaN or Inf) at row 1, column 6" <<<"$err" \
  && ok "Inf weight located (row, column)" || bad "Inf weight: rc=$rc $err"
L export -m "$T/m" --format gguf --type f16 --out "$T/m.gguf" >/dev/null 2>&1 || bad "export gguf"
/usr/bin/python3 - "$T/m.gguf" <<'PY'
# the first f16 value of output_norm.weight set to NaN (GGUF v3: walk the header to the tensor)
import struct, sys
b = bytearray(open(sys.argv[1], 'rb').read()); o = 8
def u(fmt):
    global o; v = struct.unpack_from(fmt, b, o); o += struct.calcsize(fmt); return v[0]
def s(): n = u('<Q'); global o; o += n; return b[o-n:o].decode()
sizes = {0:1,1:1,2:2,3:2,4:4,5:4,6:4,7:1,10:8,11:8,12:8}
def val(t):
    global o
    if t == 8: s()
    elif t == 9:
        et, n = u('<I'), u('<Q')
        for _ in range(n): val(et)
    else: o += sizes[t]
nt, nkv = u('<Q'), u('<Q')
for _ in range(nkv): s(); val(u('<I'))
ts = []
for _ in range(nt):
    name = s(); nd = u('<I'); [u('<Q') for _ in range(nd)]; ty = u('<I'); off = u('<Q'); ts.append((name, ty, off))
start = (o + 31) // 32 * 32
name, ty, off = [t for t in ts if t[0] == 'output_norm.weight'][0]
struct.pack_into('<e' if ty == 1 else '<f', b, start + off, float('nan'))
open(sys.argv[1], 'wb').write(b)
PY
err=$(L eval ppl -m "$T/m.gguf" --tokens <(echo 1 2 3 4 5 6) 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && grep -q "output_norm.weight' holds a non-finite value" <<<"$err" && ok "NaN in a GGUF refused" || bad "NaN GGUF: rc=$rc $err"

# Item 9: NaN (or a negative second moment) in a checkpoint's AdamW state is refused at resume,
# naming the buffer and tensor, not trained on and later called "the last good checkpoint".
L train -m "$T/m" --data "$T/d" --out "$T/mom" --steps 2 --save-every 2 --batch 1 --seq-len 16 >/dev/null 2>&1 || bad "train mom"
st="$T/mom/checkpoint-000002/train_state.bin"
/usr/bin/python3 - "$st" <<'PY'
import struct, sys
with open(sys.argv[1], 'r+b') as f:
    f.seek(8); n = struct.unpack('<Q', f.read(8))[0]
    size = f.seek(0, 2); params = (size - 16 - n) // 8
    f.seek(16 + n + 4 * (params + 3)); f.write(struct.pack('<f', -1.0))  # v[3] < 0
PY
err=$(L train -m "$T/m" --data "$T/d" --out "$T/mom" --steps 4 --save-every 2 --batch 1 --seq-len 16 --resume 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && grep -q "the AdamW second moments of .model.embed_tokens.weight. hold -1 at element 3" <<<"$err" \
  && ok "corrupt AdamW moment refused: $(grep -o 'the AdamW.*element 3' <<<"$err")" || bad "corrupt moment: rc=$rc $err"

# Item 11: a truncated tiktoken file. Beside Llama 3's tokenizer_config.json (special ids from
# 128000) it is refused; alone it loads with a warning that the special tokens moved.
mkdir -p "$T/tk"; head -n 64000 "$ROOT/models/llama3-tiktoken/tokenizer.model" > "$T/tk/tokenizer.model"
err=$(L tokenizer info --tokenizer "$T/tk/tokenizer.model" 2>&1 >/dev/null); rc=$?
[ $rc -eq 0 ] && grep -q "64000 ranks, not Llama 3's 128000" <<<"$err" && ok "truncated tiktoken alone: warned" || bad "truncated alone: rc=$rc $err"
cp "$ROOT/models/llama3-tokenizer/tokenizer_config.json" "$T/tk/"
err=$(L tokenizer info --tokenizer "$T/tk/tokenizer.model" 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && grep -q "ranks end at 63999 but tokenizer_config.json's first added token .* has id 128000" <<<"$err" \
  && ok "truncated tiktoken with its config: refused" || bad "truncated with config: rc=$rc $err"
# ... and a tokenizer whose BOS/EOS are not the model's is refused by generate and eval.
cp -r "$T/m" "$T/mt"; rm -f "$T/mt"/tokenizer*; sed -i 's/"bos_token_id": [0-9]*/"bos_token_id": 2/' "$T/mt/config.json"
err=$(L generate -m "$T/mt" --tokenizer "$T/tok" -p hi -n 2 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && grep -q "the tokenizer's BOS is id 1 but .* bos_token_id 2" <<<"$err" && ok "foreign tokenizer refused by generate" \
  || bad "foreign tokenizer: rc=$rc $err"

# Item 12: llmq's scheme label must agree with the file's bits.
L quantize -m "$T/m" --scheme w4a16 --group 32 --out "$T/q4" >/dev/null 2>&1 || bad "quantize q4"
sed -i 's/"scheme": "w4a16"/"scheme": "w8a8"/' "$T/q4/config.json"
err=$(L generate -m "$T/q4" -p hi -n 2 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && grep -q 'llmq.scheme "w8a8" contradicts bits 4' <<<"$err" && ok "lying scheme refused" || bad "lying scheme: rc=$rc $err"

# Item 13: raw library messages became one plain line.
: > "$T/empty.txt"
err=$(L tokenizer train --input "$T/empty.txt" --vocab 400 --out "$T/tok0" 2>&1); rc=$?
[ $rc -eq 1 ] && [ "$(wc -l <<<"$err")" -eq 1 ] && grep -q "the input holds no text" <<<"$err" && ok "empty tokenizer input: $err" \
  || bad "empty tokenizer input: rc=$rc $err"
echo '{"hidden_size": 16777215, "num_hidden_layers": 4096, "num_attention_heads": 4096, "num_key_value_heads": 4096, "head_dim": 1024, "vocab_size": 2147483647, "intermediate_size": 16777215}' > "$T/big.json"
err=$(L train --config "$T/big.json" --data "$T/d" --out "$T/big" --steps 1 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && grep -q "parameters; its f32 weights, gradients and AdamW moments need" <<<"$err" && ok "huge train config: one clear error" \
  || bad "huge config: rc=$rc $err"

echo "faults/state: $fails failure(s)"
[ $fails -eq 0 ]
