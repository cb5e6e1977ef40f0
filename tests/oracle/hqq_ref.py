#!/usr/bin/python3
"""HQQ as the authors' reference runs it (hqq Quantizer.quantize with optimize=True,
round_zero=False, and optimize_weights_proximal: lp_norm 0.7, beta 10, kappa 1.01, 20
iterations, early stop), in PyTorch float32 on the CPU: the oracle for src/quant/hqq.cpp.
usage: hqq_ref.py W.bin M K bits group axis optimize OUT.bin   (writes dequantized M x K f32)
"""
import sys

import numpy as np
import torch


def optimize_proximal(W_f, scale, zero, min_max, axis, lp_norm=0.7, beta=10.0, kappa=1.01, iters=20):
    def shrink(x, beta, p=lp_norm):
        return torch.sign(x) * torch.nn.functional.relu(torch.abs(x) - (1.0 / beta) * torch.pow(torch.abs(x), p - 1))

    best_error = 1e4
    for _ in range(iters):
        W_q = torch.round(W_f * scale + zero).clamp(min_max[0], min_max[1])
        W_r = (W_q - zero) / scale
        W_e = shrink(W_f - W_r, beta)
        zero = torch.mean(W_q - (W_f - W_e) * scale, axis=axis, keepdim=True)
        beta *= kappa
        err = float(torch.abs(W_f - W_r).mean())
        if err < best_error:
            best_error = err
        else:
            break
    return scale, zero


def quantize(W, bits, group, axis, optimize):
    shape = W.shape
    W = W.reshape([-1, group]) if axis == 1 else W.reshape([group, -1])
    _min = W.min(axis=axis, keepdim=True)[0]
    _max = W.max(axis=axis, keepdim=True)[0]
    max_v = 2 ** bits - 1
    scale = (max_v / (_max - _min)).clamp(max=2e4)
    zero = -_min * scale
    if optimize:
        scale, zero = optimize_proximal(W, scale, zero, [0, max_v], axis)
    W_q = torch.round(W * scale + zero).clamp(0, max_v)
    return ((W_q - zero) * (1.0 / scale)).reshape(shape)


def main():
    a = sys.argv[1:]
    M, K, bits, group, axis, opt = int(a[1]), int(a[2]), int(a[3]), int(a[4]), int(a[5]), a[6] == "1"
    W = torch.from_numpy(np.fromfile(a[0], dtype=np.float32).reshape(M, K).copy())
    quantize(W, bits, group, axis, opt).numpy().astype(np.float32).tofile(a[7])


if __name__ == "__main__":
    main()
