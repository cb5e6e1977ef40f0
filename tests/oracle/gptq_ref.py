#!/usr/bin/python3
"""Independent check of a GPTQ-layout checkpoint written by `llmq quantize`.

Reads the safetensors files with numpy (no llmq code), dequantizes every quantized linear
the way AutoGPTQ's v1 kernels do (torch shifts over qweight/qzeros, zeros + 1, g_idx
selecting the group of each input channel) and compares with the source model's float
weights: round-to-nearest must leave each weight within half a step (scale/2) of its
value. Prints one JSON line: {"linears": n, "worst": max |w - deq| / (scale/2), ...}.
usage: gptq_ref.py QUANT_DIR SOURCE_DIR
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np
import torch

DT = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "BF16": np.uint16, "U8": np.uint8, "I8": np.int8}


def read_safetensors(path):
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        a, b = e["data_offsets"]
        arr = np.frombuffer(raw[base + a:base + b], dtype=DT[e["dtype"]]).reshape(e["shape"])
        if e["dtype"] == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        out[name] = arr
    return out


def read_dir(d):
    d = Path(d)
    tensors = {}
    for f in sorted(d.glob("*.safetensors")):
        tensors.update(read_safetensors(f))
    return tensors, json.loads((d / "config.json").read_text())


def main():
    qt, qcfg = read_dir(sys.argv[1])
    st, _ = read_dir(sys.argv[2])
    qc = qcfg["quantization_config"]
    assert qc["quant_method"] == "gptq" and qc["checkpoint_format"] == "gptq", qc
    bits = qc["bits"]
    wf = torch.arange(0, 32, bits, dtype=torch.int32)
    mask = (1 << bits) - 1
    worst, n, max_code = 0.0, 0, 0
    for name in sorted(k for k in qt if k.endswith(".qweight")):
        base = name[: -len("qweight")]
        qweight = torch.from_numpy(qt[name].copy())
        qzeros = torch.from_numpy(qt[base + "qzeros"].copy())
        scales = torch.from_numpy(qt[base + "scales"].astype(np.float32))
        g_idx = torch.from_numpy(qt[base + "g_idx"].astype(np.int64))
        # AutoGPTQ: unpack along dim 0 of qweight (input channels) and dim 1 of qzeros.
        w = torch.bitwise_right_shift(qweight.unsqueeze(1).expand(-1, 32 // bits, -1), wf.view(1, -1, 1)) & mask
        w = w.reshape(-1, w.shape[2])  # (K, M)
        z = torch.bitwise_right_shift(qzeros.unsqueeze(2).expand(-1, -1, 32 // bits), wf.view(1, 1, -1)) & mask
        z = z.reshape(z.shape[0], -1) + 1  # v1: stored zero - 1
        deq = scales[g_idx] * (w - z[g_idx]).to(torch.float32)  # (K, M)
        src_name = base + "weight"
        if src_name not in st:  # a tied lm_head quantized from the embedding
            src_name = "model.embed_tokens.weight"
        ref = torch.from_numpy(st[src_name].astype(np.float32)).t()
        err = (ref - deq).abs() / (scales[g_idx] / 2)
        worst = max(worst, float(err.max()))
        max_code = max(max_code, int(w.max()))
        n += 1
    print(json.dumps({"linears": n, "worst": worst, "max_code": max_code, "bits": bits}))


if __name__ == "__main__":
    main()
