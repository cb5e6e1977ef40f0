#!/usr/bin/python3
"""PyTorch version of GPTQ (Frantar et al. 2022) as the authors' reference code runs it
(gptq.py fasterquant + quant.py find_params), in float32: the oracle llmq's C++ GPTQ is
compared with on one layer.

usage: gptq_alg_ref.py W.bin X.bin M K N bits group sym act_order static_groups OUT.bin
W.bin: M x K float32 (rows = outputs); X.bin: N x K float32 inputs. Writes the dequantized
quantized weights Q (M x K float32, original column order) to OUT.bin and prints one JSON
line with the run time of the algorithm (H from X included).
"""
import json
import sys
import time

import numpy as np
import torch


def find_params(x, bits, sym):
    maxq = 2 ** bits - 1
    zero_t = torch.zeros(x.shape[0])
    xmin = torch.minimum(x.min(1)[0], zero_t)
    xmax = torch.maximum(x.max(1)[0], zero_t)
    if sym:
        xmax = torch.maximum(torch.abs(xmin), xmax)
        neg = xmin < 0
        xmin[neg] = -xmax[neg]
    both = (xmin == 0) & (xmax == 0)
    xmin[both] = -1
    xmax[both] = 1
    scale = (xmax - xmin) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-xmin / scale)
    return scale.unsqueeze(1), zero.unsqueeze(1)


def quantize(x, scale, zero, maxq):
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


def fasterquant(W, H, bits, groupsize, sym=False, actorder=False, static_groups=False, blocksize=128,
                percdamp=0.01):
    """gptq.py fasterquant on a copy of W with the Hessian H (modified in place)."""
    maxq = 2 ** bits - 1
    rows, columns = W.shape
    W = W.clone()
    scale, zero = find_params(W, bits, sym)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    groups = []
    if static_groups:
        for i in range(0, columns, groupsize):
            groups.append(find_params(W[:, i:i + groupsize], bits, sym))
    if actorder:
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W = W[:, perm]
        H = H[perm][:, perm]
        invperm = torch.argsort(perm)
    Q = torch.zeros_like(W)
    damp = percdamp * torch.mean(torch.diag(H))
    idx = torch.arange(columns)
    H[idx, idx] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    Hinv = torch.linalg.cholesky(H, upper=True)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w = W1[:, i]
            d = Hinv1[i, i]
            if groupsize != -1:
                if not static_groups:
                    if (i1 + i) % groupsize == 0:
                        scale, zero = find_params(W[:, (i1 + i):(i1 + i + groupsize)], bits, sym)
                else:
                    c = i1 + i
                    if actorder:
                        c = perm[c].item()
                    scale, zero = groups[c // groupsize]
            q = quantize(w.unsqueeze(1), scale, zero, maxq).flatten()
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    if actorder:
        Q = Q[:, invperm]
    return Q


def gptq(W, X, bits, groupsize, sym, actorder, static_groups):
    """H = 2/n X^T X from all inputs at once, then fasterquant."""
    H = 2.0 / X.shape[0] * X.t().matmul(X)
    return fasterquant(W, H, bits, groupsize, sym, actorder, static_groups)


def main():
    a = sys.argv[1:]
    M, K, N, bits, group = int(a[2]), int(a[3]), int(a[4]), int(a[5]), int(a[6])
    sym, act, static = a[7] == "1", a[8] == "1", a[9] == "1"
    W = torch.from_numpy(np.fromfile(a[0], dtype=np.float32).reshape(M, K).copy())
    X = torch.from_numpy(np.fromfile(a[1], dtype=np.float32).reshape(N, K).copy())
    t0 = time.time()
    Q = gptq(W, X, bits, group if group > 0 else -1, sym, act, static)
    dt = time.time() - t0
    Q.numpy().astype(np.float32).tofile(a[10])
    print(json.dumps({"seconds": dt, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
