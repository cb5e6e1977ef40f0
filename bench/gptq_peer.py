#!/usr/bin/python3
"""GPTQ on one layer in PyTorch, as the authors' reference runs it (add_batch per
calibration sequence, then fasterquant with blocksize 128, damping 0.01), timed for
bench/gptq.sh. Same shapes, same thread count and the same pool-of-16-batches scheme as
bench/gptq.cpp (the values differ; the cost does not depend on them).
usage: gptq_peer.py M K samples seq_len bits group threads
"""
import json
import math
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/", 2)[0] + "/tests/oracle")
from gptq_alg_ref import find_params, quantize  # noqa: E402


def fasterquant(W, H, bits, groupsize, blocksize=128, percdamp=0.01):
    maxq = 2 ** bits - 1
    rows, columns = W.shape
    W = W.clone()
    scale, zero = find_params(W, bits, False)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    idx = torch.arange(columns)
    H[idx, idx] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    Hinv = torch.linalg.cholesky(H, upper=True)
    Q = torch.zeros_like(W)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w = W1[:, i]
            d = Hinv1[i, i]
            if groupsize != -1 and (i1 + i) % groupsize == 0:
                scale, zero = find_params(W[:, (i1 + i):(i1 + i + groupsize)], bits, False)
            q = quantize(w.unsqueeze(1), scale, zero, maxq).flatten()
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return Q


def main():
    M, K, S, T, bits, group, threads = (int(v) for v in sys.argv[1:8])
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    W = 0.02 * torch.randn(M, K)
    pool = [torch.randn(T, K) for _ in range(16)]
    t0 = time.time()
    H = torch.zeros(K, K)
    n = 0
    for s in range(S):  # gptq.py add_batch, one sequence at a time
        inp = pool[s % 16].t()
        H *= n / (n + 1)
        n += 1
        inp = math.sqrt(2 / n) * inp
        H += inp.matmul(inp.t())
    t1 = time.time()
    fasterquant(W, H, bits, group)
    t2 = time.time()
    print(json.dumps({"hessian_s": t1 - t0, "quant_s": t2 - t1, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
