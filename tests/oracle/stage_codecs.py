#!/usr/bin/env python3
"""float64 PyTorch transcription of the stage-boundary codecs as the reference code computes
them (AQ-SGD's compress/fixpoint.py _compress_nbits / _decompress_nbits, TAH-Quant's
compress/tah_modules.py compress / decompress), written from their descriptions for
tests/pipeline_test.cpp: the arithmetic in float64 except where the reference rounds to fp16
(the scales and zero points it sends).

usage: stage_codecs.py fixpoint IN OUT BITS
       stage_codecs.py tah IN OUT SEQ HI_BITS LO_BITS TILE HI_RATIO
IN: int64 rows, int64 width, then rows*width float32. OUT: rows*width float64 (decoded), then
for tah rows bytes (1 = low-precision row) and rows*width/tile bytes (1 = rotated tile).
"""
import struct
import sys

import numpy as np
import torch

torch.set_default_dtype(torch.float64)


def load(path):
    b = open(path, "rb").read()
    rows, width = struct.unpack_from("<qq", b)
    x = np.frombuffer(b, dtype=np.float32, offset=16, count=rows * width).reshape(rows, width)
    return torch.tensor(x.astype(np.float64))


def fp16(t):
    return t.to(torch.float16).to(torch.float64)


def fixpoint(x, bits):
    # One scale per channel over every row (the reference's scale_dims (0, 1) of (mb, S, C)).
    f = bits - 1
    s = fp16(x.abs().amax(dim=0, keepdim=True))
    d = fp16(s + 1e-6)
    q = torch.round(x / d * 2.0 ** f).clamp(-(2 ** f), 2 ** f - 1)  # torch.round: half to even
    return q / 2.0 ** f * s


def hadamard(n):
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def tah(x, seq, hi_bits, lo_bits, tile, hi_ratio):
    rows, width = x.shape
    B = rows // seq
    lo_n = int(seq * (1 - hi_ratio))
    H = hadamard(tile)
    out = torch.empty_like(x)
    low_map = np.zeros(rows, np.uint8)
    flags = np.zeros(rows * width // tile, np.uint8)
    for b in range(B):
        xs = x[b * seq:(b + 1) * seq]
        a = xs.abs()
        p = a / (a.sum(dim=1, keepdim=True) + 1e-30)
        ent = -(p * torch.log(p + 1e-30)).sum(dim=1)
        order = sorted(range(seq), key=lambda t: (ent[t].item(), t))  # stable: ties by position
        low = sorted(order[:lo_n])
        high = sorted(order[lo_n:])
        perm = low + high
        for t in low:
            low_map[b * seq + t] = 1
        for k, t in enumerate(perm):
            bits = lo_bits if k < lo_n else hi_bits
            for j in range(width // tile):
                ti = (b * seq + k) * (width // tile) + j
                v = xs[t, j * tile:(j + 1) * tile].clone()
                top = v.abs().topk(2).values
                flagged = bool(top[0] >= 2 * top[1])
                pivot = int(v.abs().argmax())
                if flagged:
                    flags[ti] = 1
                    v[0], v[pivot] = v[pivot].clone(), v[0].clone()
                    v = (v @ H) / tile ** 0.5
                zero = v.min()
                scale = max((v.max() - zero) / (2 ** bits - 1), 1e-30)
                code = torch.round((v - zero) / scale).clamp(0, 2 ** bits - 1)
                r = code * fp16(torch.tensor(scale)) + fp16(zero)  # decoded with the fp16 values sent
                if flagged:
                    r = (r @ H.T) / tile ** 0.5
                    r[0], r[pivot] = r[pivot].clone(), r[0].clone()
                out[b * seq + t, j * tile:(j + 1) * tile] = r
    return out, low_map, flags


def main():
    kind, src, dst = sys.argv[1:4]
    x = load(src)
    with open(dst, "wb") as f:
        if kind == "fixpoint":
            f.write(fixpoint(x, int(sys.argv[4])).numpy().astype(np.float64).tobytes())
        else:
            seq, hi, lo, tile = (int(v) for v in sys.argv[4:8])
            y, low_map, flags = tah(x, seq, hi, lo, tile, float(sys.argv[8]))
            f.write(y.numpy().astype(np.float64).tobytes())
            f.write(low_map.tobytes())
            f.write(flags.tobytes())


if __name__ == "__main__":
    main()
