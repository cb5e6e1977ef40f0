#!/usr/bin/python3
"""Independent float64 reference of the Llama architecture, written after Meta's
llama/model.py (interleaved complex RoPE, repeat_kv GQA, RMSNorm, SwiGLU) and its
apply_scaling for Llama 3.1 rope scaling. Reads a Hugging Face model directory with its own
safetensors parser and undoes HF's q/k row permutation, so a wrong row order in llmq shows.

usage: llama_ref.py MODEL_DIR SEQS.json OUT.bin
SEQS.json: [[token ids], ...]; OUT.bin: float64 logits of every position of every
sequence, concatenated in order (sum of lengths x vocab).
"""
import json, math, os, struct, sys

import numpy as np
import torch

torch.set_default_dtype(torch.float64)


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, en = e["data_offsets"]
        raw = data[base + b : base + en]
        if e["dtype"] == "F32":
            a = np.frombuffer(raw, dtype="<f4").astype(np.float64)
        elif e["dtype"] == "F16":
            a = np.frombuffer(raw, dtype="<f2").astype(np.float64)
        elif e["dtype"] == "BF16":
            a = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        else:
            raise SystemExit(f"unsupported dtype {e['dtype']}")
        out[name] = torch.from_numpy(a.reshape(e["shape"]).copy())
    return out


def load_weights(d):
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        files = sorted(set(json.load(open(idx))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    w = {}
    for f in files:
        w.update(read_safetensors(os.path.join(d, f)))
    return w


def apply_scaling(freqs, s):
    factor = s["factor"]
    low, high = s["low_freq_factor"], s["high_freq_factor"]
    old = s["original_max_position_embeddings"]
    low_wl, high_wl = old / low, old / high
    out = []
    for f in freqs.tolist():
        wl = 2 * math.pi / f
        if wl < high_wl:
            out.append(f)
        elif wl > low_wl:
            out.append(f / factor)
        else:
            sm = (old / wl - low) / (high - low)
            out.append((1 - sm) * f / factor + sm * f)
    return torch.tensor(out)


def freqs_cis(hd, end, theta, scaling):
    freqs = 1.0 / (theta ** (torch.arange(0, hd, 2)[: hd // 2].double() / hd))
    if scaling:
        freqs = apply_scaling(freqs, scaling)
    t = torch.arange(end).double()
    return torch.polar(torch.ones(end, hd // 2), torch.outer(t, freqs))


def rope(x, fc):  # x: (T, H, hd), pairs (2j, 2j+1)
    xc = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * fc[:, None, :]).flatten(2)


def rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def forward(c, W, tokens, lin=None, kv=None):
    """lin(name, x): the output of linear `name` (an HF weight name) for input x; default
    x @ W[name].T (adapter_ref.py passes LoRA/DoRA linears). kv(k, v): K after RoPE and V,
    each (T, KV heads, hd), as attention will read them (qat_ref.py's KV quantizer); default
    unchanged."""
    if lin is None:
        lin = lambda name, x: x @ W[name].T  # noqa: E731
    dim, H, KV = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    hd = c.get("head_dim") or dim // H
    eps = c["rms_norm_eps"]
    T = len(tokens)
    scaling = c.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type")) != "llama3":
        scaling = None
    fc = freqs_cis(hd, T, c["rope_theta"], scaling)
    h = W["model.embed_tokens.weight"][torch.tensor(tokens)]
    mask = torch.full((T, T), float("-inf")).triu(1)
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        x = rmsnorm(h, W[p + "input_layernorm.weight"], eps)
        # HF's q/k order to Meta's: within a head, HF's rows are [first halves of the rotary
        # pairs, second halves], Meta's pairs are adjacent; permuting the outputs is the same
        # as permuting the weight's rows.
        def meta_cols(y, n):
            return y.view(T, n, 2, hd // 2).transpose(2, 3).reshape(T, n * hd)
        q = rope(meta_cols(lin(p + "self_attn.q_proj.weight", x), H).view(T, H, hd), fc)
        k = rope(meta_cols(lin(p + "self_attn.k_proj.weight", x), KV).view(T, KV, hd), fc)
        v = lin(p + "self_attn.v_proj.weight", x).view(T, KV, hd)
        if kv is not None:
            k, v = kv(k, v)
        k = k.repeat_interleave(H // KV, dim=1)  # repeat_kv
        v = v.repeat_interleave(H // KV, dim=1)
        s = torch.einsum("thd,shd->hts", q, k) / math.sqrt(hd) + mask
        a = torch.einsum("hts,shd->thd", torch.softmax(s, dim=-1), v).reshape(T, H * hd)
        h = h + lin(p + "self_attn.o_proj.weight", a)
        x = rmsnorm(h, W[p + "post_attention_layernorm.weight"], eps)
        g = lin(p + "mlp.gate_proj.weight", x)
        u = lin(p + "mlp.up_proj.weight", x)
        h = h + lin(p + "mlp.down_proj.weight", torch.nn.functional.silu(g) * u)
    h = rmsnorm(h, W["model.norm.weight"], eps)
    out = W["model.embed_tokens.weight"] if c.get("tie_word_embeddings") else W["lm_head.weight"]
    return h @ out.T


def main():
    d, seqs_path, out_path = sys.argv[1:4]
    c = json.load(open(os.path.join(d, "config.json")))
    W = load_weights(d)
    seqs = json.load(open(seqs_path))
    with open(out_path, "wb") as f:
        for s in seqs:
            f.write(forward(c, W, s).numpy().astype("<f8").tobytes())


if __name__ == "__main__":
    main()
