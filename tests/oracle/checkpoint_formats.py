#!/usr/bin/python3
"""Writes quantized checkpoints of a float Hugging Face model directory in the layouts other
tools write, following each format's documentation and reference packing, with no llmq
code, plus the dequantized model (every quantized linear as scale * (code - zero) in f32)
as a plain directory:
  awq        AutoAWQ's GEMM layout (quant_method "awq", version "gemm"): 4-bit codes with
             zero points per group of G input channels (AWQ's pseudo_quantize_tensor:
             scale = (max - min) / 15, zero = clamp(-round(min / scale), 0, 15),
             code = clamp(round(w / scale) + zero, 0, 15)), f16 scales, codes and zero points
             packed eight per int32 along the OUTPUT channels in AWQ's order (nibble i holds
             output 8c + order[i], order 0 2 4 6 1 3 5 7);
  ct-w4a16   compressed-tensors "pack-quantized" (llm-compressor's W4A16), asymmetric, group
             G: signed codes q in [-8, 7] and zero points, each stored + 8 and packed eight
             per int32, weight_packed along the inputs, weight_zero_point along the outputs
             (compressed-tensors' pack_to_int32), bf16 weight_scale (M, K/G), weight_shape;
  ct-w4a16-sym  the same, symmetric (no zero points);
  ct-w8a8    compressed-tensors "int-quantized" (W8A8): int8 .weight, symmetric per channel,
             weight_scale (M, 1), int8 activations per token, dynamic.
And the other way: ct-read reads a compressed-tensors checkpoint (pack-quantized or
int-quantized, as llmq writes them) with compressed-tensors' unpacking (unpack_from_int32:
LSB first, unsigned minus 2^(bits-1)) and writes its dequantized model.

usage: checkpoint_formats.py FORMAT SRC_DIR OUT_DIR DEQ_DIR GROUP
       checkpoint_formats.py ct-read CT_DIR DEQ_DIR
"""
import json
import re
import struct
import sys
from pathlib import Path

import numpy as np
import torch

ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def write_safetensors(path, tensors):
    names = {np.float32: "F32", np.float16: "F16", np.int32: "I32", np.int8: "I8", np.uint16: "BF16"}
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


def pack_along(v, bits, dim):  # unsigned values, LSB first along dim (compressed-tensors)
    pf = 32 // bits
    v = v.astype(np.uint32)
    if dim == 1:
        out = np.zeros((v.shape[0], v.shape[1] // pf), dtype=np.uint32)
        for i in range(pf):
            out |= v[:, i::pf] << np.uint32(bits * i)
    else:
        out = np.zeros((v.shape[0] // pf, v.shape[1]), dtype=np.uint32)
        for i in range(pf):
            out |= v[i::pf, :] << np.uint32(bits * i)
    return out.view(np.int32)


def to_bf16(x):  # round-to-nearest-even to bf16, returned as float32 values and raw bits
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    r = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)
    return (r.astype(np.uint32) << np.uint32(16)).view(np.float32), r


def pack(q):  # q (rows, M) ints 0..15 -> (rows, M/8) int32, AWQ order
    rows, M = q.shape
    out = np.zeros((rows, M // 8), dtype=np.uint32)
    for i in range(8):
        out |= q[:, np.arange(M // 8) * 8 + ORDER[i]].astype(np.uint32) << np.uint32(4 * i)
    return out.view(np.int32)


def read_any(path):  # safetensors of any dtype llmq writes; floats as f32
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    dt = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I32": np.int32, "I8": np.int8}
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        a, b = e["data_offsets"]
        arr = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=dt[e["dtype"]]).reshape(e["shape"])
        if e["dtype"] == "BF16":
            arr = (arr.astype(np.uint32) << np.uint32(16)).view(np.float32)
        out[name] = arr.astype(np.float32) if e["dtype"] in ("F16", "BF16", "F32") else arr
    return out


def unpack_along(v, bits, n, dim):  # compressed-tensors' unpack_from_int32
    pf, mask = 32 // bits, (1 << bits) - 1
    v = v.view(np.uint32)
    if dim == 1:
        out = np.zeros((v.shape[0], v.shape[1] * pf), dtype=np.int64)
        for i in range(pf):
            out[:, i::pf] = (v >> np.uint32(bits * i)) & mask
        out = out[:, :n]
    else:
        out = np.zeros((v.shape[0] * pf, v.shape[1]), dtype=np.int64)
        for i in range(pf):
            out[i::pf, :] = (v >> np.uint32(bits * i)) & mask
        out = out[:n, :]
    return out - (1 << (bits - 1))


def ct_read(ct_dir, deq_dir):
    cfg = json.loads((ct_dir / "config.json").read_text())
    qc = cfg.pop("quantization_config")
    assert qc["quant_method"] == "compressed-tensors", qc
    groups = qc["config_groups"]

    def weights_of(module):
        # compressed-tensors' matching: "ignore" first, then an exact name before a "re:"
        # pattern (re.match) before the class name "Linear".
        def level(target):
            if target == module:
                return 3
            if target.startswith("re:"):
                return 2 if re.match(target[3:], module) else 0
            return 1 if target == "Linear" else 0
        assert not any(level(t) for t in qc.get("ignore") or []), module
        best = max(groups.values(), key=lambda g: max(level(t) for t in g["targets"]))
        assert max(level(t) for t in best["targets"]) > 0, module
        return best["weights"]
    t = {}
    for f in sorted(ct_dir.glob("*.safetensors")):
        t.update(read_any(f))
    deq = {}
    for name, arr in t.items():
        if name.endswith("weight_packed"):
            base = name[: -len("weight_packed")]
            w = weights_of(base[:-1])
            bits = w["num_bits"]
            M, K = (int(x) for x in t[base + "weight_shape"])
            q = unpack_along(arr, bits, K, 1)
            scale = t[base + "weight_scale"].astype(np.float64)
            ng = scale.shape[1]
            zp = unpack_along(t[base + "weight_zero_point"], bits, M, 0) if not w["symmetric"] else np.zeros((M, ng))
            G = K // ng
            deq[base + "weight"] = ((q - np.repeat(zp, G, axis=1)) * np.repeat(scale, G, axis=1)).astype(np.float32)
        elif arr.dtype == np.int8:
            base = name[: -len("weight")]
            deq[name] = (arr.astype(np.float64) * t[base + "weight_scale"].astype(np.float64)).astype(np.float32)
        elif name.split(".")[-1] in ("weight_scale", "weight_zero_point", "weight_shape"):
            continue
        else:
            deq[name] = arr
    deq_dir.mkdir(parents=True, exist_ok=True)
    write_safetensors(deq_dir / "model.safetensors", deq)
    cfg["torch_dtype"] = "float32"
    (deq_dir / "config.json").write_text(json.dumps(cfg, indent=2))


def main():
    fmt = sys.argv[1]
    if fmt == "ct-read":
        return ct_read(Path(sys.argv[2]), Path(sys.argv[3]))
    src, out_dir, deq_dir, G = Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5])
    cfg = json.loads((src / "config.json").read_text())
    w = read_any(src / "model.safetensors")
    out, deq = {}, {}
    for name, t in w.items():
        if not (name.endswith(".weight") and name.split(".")[-2] in LINEARS):
            out[name] = t
            deq[name] = t
            continue
        base = name[: -len("weight")]
        W = torch.from_numpy(t.copy()).float()  # (M, K)
        M, K = W.shape
        if fmt == "awq":
            g = W.reshape(M, K // G, G)
            mx, mn = g.amax(dim=2, keepdim=True), g.amin(dim=2, keepdim=True)
            scale = (mx - mn).clamp(min=1e-5) / 15
            scale16 = scale.half()
            zero = (-torch.round(mn / scale)).clamp(0, 15)
            code = (torch.round(g / scale) + zero).clamp(0, 15)
            deq[name] = ((code - zero) * scale16.float()).reshape(M, K).numpy().astype(np.float32)
            out[base + "qweight"] = pack(code.reshape(M, K).to(torch.int64).numpy().T)       # (K, M/8)
            out[base + "qzeros"] = pack(zero.reshape(M, K // G).to(torch.int64).numpy().T)  # (K/G, M/8)
            out[base + "scales"] = scale16.reshape(M, K // G).numpy().T.copy()             # (K/G, M) f16
        elif fmt in ("ct-w4a16", "ct-w4a16-sym"):
            g = W.reshape(M, K // G, G)
            if fmt == "ct-w4a16":  # compressed-tensors' asymmetric min/max observer: scale (max - min) / 15
                mx, mn = g.amax(dim=2, keepdim=True).clamp(min=0), g.amin(dim=2, keepdim=True).clamp(max=0)
                scale = ((mx - mn) / 15).clamp(min=1e-8)
                zp = torch.round(-8 - mn / scale).clamp(-8, 7)
            else:
                scale = (g.abs().amax(dim=2, keepdim=True) / 7.5).clamp(min=1e-8)
                zp = torch.zeros_like(scale)
            sb, sbits = to_bf16(scale.numpy())
            sb = torch.from_numpy(sb)
            q = (torch.round(g / sb) + zp).clamp(-8, 7)
            deq[name] = ((q - zp) * sb).reshape(M, K).numpy().astype(np.float32)
            out[base + "weight_packed"] = pack_along((q.reshape(M, K) + 8).to(torch.int64).numpy(), 4, 1)
            out[base + "weight_scale"] = sbits.reshape(M, K // G)
            out[base + "weight_shape"] = np.array([M, K], dtype=np.int32)
            if fmt == "ct-w4a16":
                out[base + "weight_zero_point"] = pack_along((zp.reshape(M, K // G) + 8).to(torch.int64).numpy(), 4, 0)
        elif fmt == "ct-w8a8":
            scale = (W.abs().amax(dim=1, keepdim=True) / 127).clamp(min=1e-8)
            sb, sbits = to_bf16(scale.numpy())
            sb = torch.from_numpy(sb)
            q = torch.round(W / sb).clamp(-127, 127)
            deq[name] = (q * sb).numpy().astype(np.float32)
            out[name] = q.to(torch.int8).numpy()
            out[base + "weight_scale"] = sbits.reshape(M, 1)
        else:
            sys.exit("unknown format " + fmt)
    for d in (out_dir, deq_dir):
        d.mkdir(parents=True, exist_ok=True)
    write_safetensors(out_dir / "model.safetensors", out)
    write_safetensors(deq_dir / "model.safetensors", deq)
    (deq_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    if fmt == "awq":
        qc = {"quant_method": "awq", "bits": 4, "group_size": G, "zero_point": True, "version": "gemm",
              "modules_to_not_convert": None}
    else:
        weights = {"num_bits": 4 if fmt != "ct-w8a8" else 8, "type": "int", "symmetric": fmt != "ct-w4a16",
                   "strategy": "group" if fmt != "ct-w8a8" else "channel", "group_size": G if fmt != "ct-w8a8" else None,
                   "dynamic": False, "actorder": None, "observer": "minmax"}
        acts = None if fmt != "ct-w8a8" else {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token",
                                              "dynamic": True, "observer": None}
        qc = {"quant_method": "compressed-tensors", "format": "pack-quantized" if fmt != "ct-w8a8" else "int-quantized",
              "quantization_status": "compressed", "ignore": ["lm_head"],
              "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": acts,
                                            "output_activations": None}}}
    cfg["quantization_config"] = qc
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2))


main()
