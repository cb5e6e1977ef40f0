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
from gptq_alg_ref import fasterquant  # noqa: E402  (the reference algorithm, shared with the tests)


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
    fasterquant(W, H, bits, group)  # asymmetric, no act-order, blocksize 128, damping 0.01
    t2 = time.time()
    print(json.dumps({"hessian_s": t1 - t0, "quant_s": t2 - t1, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
