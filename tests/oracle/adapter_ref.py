#!/usr/bin/python3
"""PyTorch float64 oracle for LoRA/DoRA adapters, written after PEFT's definitions (peft
is not installed here; its layout and formulas are documented): per targeted linear
  LoRA: y = W x + s B(A x)
  DoRA: y = W x + (c - 1) W x + c s B(A x),  c = m / ||W + s B A||_row, the norm detached
(PEFT's DoraLinearLayer.forward without dropout), s = lora_alpha / r (/ sqrt(r) with use_rslora).

usage:
  adapter_ref.py make MODEL_DIR ADAPTER_DIR SEED R ALPHA DORA RSLORA TARGETS NORMS
      writes a random adapter in PEFT's layout (adapter_config.json, adapter_model.safetensors
      with base_model.model.model.layers.N.<module>.lora_A.weight / lora_B.weight /
      lora_magnitude_vector, and the norms when NORMS is 1)
  adapter_ref.py ref MODEL_DIR ADAPTER_DIR BATCH.json OUT.bin
      BATCH.json {"tokens": [[ids]...], "targets": [[ids]...], "names": [adapter tensor names]};
      OUT.bin float64: the loss, each named tensor's gradient, then the logits of every position
"""
import json, math, os, struct, sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_ref  # noqa: E402

torch.set_default_dtype(torch.float64)
ROOT = "base_model.model."
MODULES = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
           "o_proj": "self_attn.o_proj", "gate_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
           "down_proj": "mlp.down_proj"}


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        b = t.detach().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def make(model_dir, out, seed, r, alpha, dora, rslora, targets, norms):
    c = json.load(open(os.path.join(model_dir, "config.json")))
    W = llama_ref.load_weights(model_dir)
    g = torch.Generator().manual_seed(seed)
    t = {}
    for l in range(c["num_hidden_layers"]):
        for short in targets:
            m = f"model.layers.{l}.{MODULES[short]}"
            w = W[m + ".weight"]
            out_f, in_f = w.shape
            t[ROOT + m + ".lora_A.weight"] = torch.randn(r, in_f, generator=g) / math.sqrt(in_f)
            t[ROOT + m + ".lora_B.weight"] = torch.randn(out_f, r, generator=g) * 0.05
            if dora:
                t[ROOT + m + ".lora_magnitude_vector"] = w.norm(dim=1) * (1 + 0.1 * torch.randn(out_f, generator=g))
        if norms:
            for n in ("input_layernorm", "post_attention_layernorm"):
                t[ROOT + f"model.layers.{l}.{n}.weight"] = 1 + 0.1 * torch.randn(c["hidden_size"], generator=g)
    if norms:
        t[ROOT + "model.norm.weight"] = 1 + 0.1 * torch.randn(c["hidden_size"], generator=g)
    os.makedirs(out, exist_ok=True)
    # f32 on disk: the oracle then reads back exactly what llmq reads.
    write_safetensors(os.path.join(out, "adapter_model.safetensors"), t)
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": model_dir, "r": r,
           "lora_alpha": alpha, "lora_dropout": 0.0, "target_modules": targets, "use_dora": bool(dora),
           "use_rslora": bool(rslora), "bias": "none", "fan_in_fan_out": False,
           "modules_to_save": ["input_layernorm", "post_attention_layernorm", "norm"] if norms else None}
    json.dump(cfg, open(os.path.join(out, "adapter_config.json"), "w"), indent=2)


def ref(model_dir, adapter_dir, batch_path, out_path):
    c = json.load(open(os.path.join(model_dir, "config.json")))
    W = llama_ref.load_weights(model_dir)
    a = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
    T = llama_ref.read_safetensors(os.path.join(adapter_dir, "adapter_model.safetensors"))
    for v in T.values():
        v.requires_grad_(True)
    r, alpha = a["r"], a["lora_alpha"]
    s = alpha / math.sqrt(r) if a.get("use_rslora") else alpha / r
    for k, v in T.items():  # trained norms replace the base's (modules_to_save)
        if k.endswith("layernorm.weight") or k.endswith("model.norm.weight"):
            W[k[len(ROOT):]] = v

    def lin(name, x):
        w = W[name]
        m = ROOT + name[: -len(".weight")]
        if m + ".lora_A.weight" not in T:
            return x @ w.T
        A, B = T[m + ".lora_A.weight"], T[m + ".lora_B.weight"]
        base = x @ w.T
        lora = (x @ A.T) @ B.T * s
        if m + ".lora_magnitude_vector" not in T:
            return base + lora
        norm = (w + s * (B @ A)).norm(p=2, dim=1).detach()
        c_ = (T[m + ".lora_magnitude_vector"] / norm).view(1, -1)
        return base + (c_ - 1) * base + c_ * lora

    b = json.load(open(batch_path))
    logits = torch.cat([llama_ref.forward(c, W, seq, lin) for seq in b["tokens"]])
    targets = torch.tensor([t for row in b["targets"] for t in row])
    loss = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-1)
    loss.backward()
    out = [loss.detach().reshape(1)] + [T[n].grad.reshape(-1) for n in b["names"]] + [logits.detach().reshape(-1)]
    with open(out_path, "wb") as f:
        f.write(torch.cat(out).numpy().astype("<f8").tobytes())


if __name__ == "__main__":
    if sys.argv[1] == "make":
        d, o, seed, r, alpha, dora, rs, tg, nm = sys.argv[2:11]
        make(d, o, int(seed), int(r), float(alpha), int(dora), int(rs), list(MODULES) if tg == "all-linear" else tg.split(","),
             int(nm))
    else:
        ref(*sys.argv[2:6])
