#!/usr/bin/python3
"""Independent check of an FP8 (compressed-tensors float-quantized) checkpoint written by
`llmq quantize --scheme fp8`.

Reads the safetensors files with numpy (no llmq code), decodes every F8_E4M3 weight from
its bits (sign, 4 exponent bits with bias 7, 3 mantissa bits; exponent 0 is subnormal,
m * 2^-9), multiplies by weight_scale (per channel (M, 1) or per tensor (1)) and checks
against the source model's float weights that the chosen code is a nearest one: |w/s - q|
is at most half the distance to the neighbouring E4M3 value, for every weight. Also checks
the scale rule (amax / 448 per channel or tensor). Prints one JSON line:
{"linears": n, "worst": max |w/s - q| / (half step), "scale_err": max relative scale error}.
usage: fp8_ref.py QUANT_DIR SOURCE_DIR
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np

DT = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F8_E4M3": np.uint8}


def read_dir(d):
    out = {}
    for f in sorted(Path(d).glob("*.safetensors")):
        raw = f.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
        for name, e in header.items():
            if name == "__metadata__":
                continue
            a, b = e["data_offsets"]
            arr = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=DT[e["dtype"]]).reshape(e["shape"])
            if e["dtype"] == "BF16":
                arr = (arr.astype(np.uint32) << 16).view(np.float32)
            out[name] = (e["dtype"], arr)
    return out, json.loads((Path(d) / "config.json").read_text())


def e4m3(bytes_):
    b = bytes_.astype(np.int64)
    sign = np.where(b & 0x80, -1.0, 1.0)
    e = (b >> 3) & 15
    m = b & 7
    mag = np.where(e == 0, m * 2.0 ** -9, (1 + m / 8.0) * 2.0 ** (e - 7))
    assert not np.any((b & 0x7F) == 0x7F), "NaN code stored"
    return sign * mag


def main():
    qt, qcfg = read_dir(sys.argv[1])
    st, _ = read_dir(sys.argv[2])
    qc = qcfg["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["format"] == "float-quantized", qc
    strategy = qc["config_groups"]["group_0"]["weights"]["strategy"]
    grid = np.unique(np.abs(e4m3(np.arange(0, 0x7F, dtype=np.uint8))))  # 0 .. 448
    worst, scale_err, n = 0.0, 0.0, 0
    for name in sorted(k for k, (dt, _) in qt.items() if dt == "F8_E4M3"):
        base = name[: -len("weight")]
        q = e4m3(qt[name][1])
        s = qt[base + "weight_scale"][1].astype(np.float64)
        w = st[name][1].astype(np.float64)
        if strategy == "channel":
            assert s.shape == (w.shape[0], 1), s.shape
            want = np.abs(w).max(axis=1, keepdims=True) / 448.0
        else:
            assert s.shape == (1,), s.shape
            want = np.array([np.abs(w).max() / 448.0])
        scale_err = max(scale_err, float(np.max(np.abs(s - want) / want)))
        x = np.abs(w / s)
        i = np.clip(np.searchsorted(grid, x), 1, len(grid) - 1)
        # half of the gap between the two grid values around x
        half = (grid[i] - grid[i - 1]) / 2.0
        err = np.abs(x - np.abs(q))
        worst = max(worst, float(np.max(err / half)))
        assert np.all((q == 0) | (np.sign(q) == np.sign(w))), name
        n += 1
    print(json.dumps({"linears": n, "worst": worst, "scale_err": scale_err}))


if __name__ == "__main__":
    main()
