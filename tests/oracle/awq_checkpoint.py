#!/usr/bin/python3
"""Writes an AWQ checkpoint (AutoAWQ's GEMM layout, quant_method "awq", version "gemm") of a
float Hugging Face model directory, following the format's documentation and AutoAWQ's
packing, with no llmq code: each linear of every block quantized to 4 bits with zero points
per group of G input channels (AWQ's pseudo_quantize_tensor: scale = (max - min) / 15,
zero = clamp(-round(min / scale), 0, 15), code = clamp(round(w / scale) + zero, 0, 15)),
scales stored as f16, codes and zero points packed eight per int32 along the output
channels in AWQ's order (nibble i holds output 8c + order[i], order 0 2 4 6 1 3 5 7).
Also writes the dequantized model, scale16 * (code - zero) in f32, as a plain directory.

usage: awq_checkpoint.py SRC_DIR AWQ_DIR DEQ_DIR GROUP
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np
import torch

ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def read_safetensors(path):
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        a, b = e["data_offsets"]
        assert e["dtype"] == "F32", name
        out[name] = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=np.float32).reshape(e["shape"])
    return out


def write_safetensors(path, tensors):
    names = {np.float32: "F32", np.float16: "F16", np.int32: "I32"}
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        b = arr.tobytes()
        header[name] = {"dtype": names[arr.dtype.type], "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)


def pack(q):  # q (rows, M) ints 0..15 -> (rows, M/8) int32, AWQ order
    rows, M = q.shape
    out = np.zeros((rows, M // 8), dtype=np.uint32)
    for i in range(8):
        out |= q[:, np.arange(M // 8) * 8 + ORDER[i]].astype(np.uint32) << np.uint32(4 * i)
    return out.view(np.int32)


def main():
    src, awq_dir, deq_dir, G = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    cfg = json.loads((src / "config.json").read_text())
    w = read_safetensors(src / "model.safetensors")
    awq, deq = {}, {}
    for name, t in w.items():
        if name.endswith(".weight") and name.split(".")[-2] in LINEARS:
            base = name[: -len("weight")]
            W = torch.from_numpy(t.copy()).double()  # (M, K)
            M, K = W.shape
            g = W.reshape(M, K // G, G)
            mx, mn = g.amax(dim=2, keepdim=True), g.amin(dim=2, keepdim=True)
            scale = ((mx - mn).clamp(min=1e-5) / 15).float()
            scale16 = scale.half()
            zero = (-torch.round(mn.float() / scale)).clamp(0, 15)
            code = (torch.round(g.float() / scale) + zero).clamp(0, 15)
            deq[name] = ((code - zero) * scale16.float()).reshape(M, K).numpy().astype(np.float32)
            awq[base + "qweight"] = pack(code.reshape(M, K).to(torch.int64).numpy().T)          # (K, M/8)
            awq[base + "qzeros"] = pack(zero.reshape(M, K // G).to(torch.int64).numpy().T)     # (K/G, M/8)
            awq[base + "scales"] = scale16.reshape(M, K // G).numpy().T.copy()                # (K/G, M) f16
        else:
            awq[name] = t
            deq[name] = t
    for d in (awq_dir, deq_dir):
        d.mkdir(parents=True, exist_ok=True)
    write_safetensors(awq_dir / "model.safetensors", awq)
    write_safetensors(deq_dir / "model.safetensors", deq)
    (deq_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": G, "zero_point": True, "version": "gemm",
                                  "modules_to_not_convert": None}
    (awq_dir / "config.json").write_text(json.dumps(cfg, indent=2))


main()
