#!/usr/bin/python3
"""Plain PyTorch training of the same Llama as `llmq train` (llama_ref.py's architecture as
nn.Modules: RMSNorm, rotary embeddings, grouped-query attention via
an explicit masked softmax, SwiGLU, untied output), float32, torch.optim.AdamW, with the
given threads. PRECISION bf16 runs forward and loss under CPU autocast to bfloat16
(torch.autocast("cpu", dtype=torch.bfloat16): matmuls in bf16, master weights and AdamW in
f32), as a PyTorch user would train in mixed precision on a CPU. Prints
"torch TOKENS_PER_S PEAK_RSS_BYTES" for bench/train.sh.

usage: train_peer.py DIM LAYERS HEADS KV_HEADS FFN VOCAB BATCH SEQ STEPS THREADS [f32|bf16]
"""
import contextlib, math, resource, sys, time

import torch
import torch.nn as nn
import torch.nn.functional as F

dim, layers, heads, kv, ffn, vocab, B, T, steps, threads = map(int, sys.argv[1:11])
precision = sys.argv[11] if len(sys.argv) > 11 else "f32"
autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
torch.set_num_threads(threads)
torch.manual_seed(0)
hd = dim // heads
self_mask = torch.full((T, T), float("-inf")).triu(1)


class RMSNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.w = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * self.w


def rope(x, cos, sin):  # x (B, H, T, hd), rotate-half
    a, b = x[..., : hd // 2], x[..., hd // 2 :]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.n1, self.n2 = RMSNorm(dim), RMSNorm(dim)
        self.q = nn.Linear(dim, heads * hd, bias=False)
        self.k = nn.Linear(dim, kv * hd, bias=False)
        self.v = nn.Linear(dim, kv * hd, bias=False)
        self.o = nn.Linear(heads * hd, dim, bias=False)
        self.g = nn.Linear(dim, ffn, bias=False)
        self.u = nn.Linear(dim, ffn, bias=False)
        self.d = nn.Linear(ffn, dim, bias=False)

    def forward(self, x, cos, sin):
        h = self.n1(x)
        q = rope(self.q(h).view(B, T, heads, hd).transpose(1, 2), cos, sin)
        k = rope(self.k(h).view(B, T, kv, hd).transpose(1, 2), cos, sin)
        v = self.v(h).view(B, T, kv, hd).transpose(1, 2)
        k = k.repeat_interleave(heads // kv, dim=1)
        v = v.repeat_interleave(heads // kv, dim=1)
        s = (q @ k.transpose(-2, -1)) / math.sqrt(hd) + self_mask  # Debian's torch predates SDPA
        a = torch.softmax(s, dim=-1) @ v
        x = x + self.o(a.transpose(1, 2).reshape(B, T, dim))
        h = self.n2(x)
        return x + self.d(F.silu(self.g(h)) * self.u(h))


class Llama(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block() for _ in range(layers))
        self.norm = RMSNorm(dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        f = 1.0 / (500000.0 ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.outer(torch.arange(T).float(), f)
        self.register_buffer("cos", ang.cos())
        self.register_buffer("sin", ang.sin())

    def forward(self, idx, tgt):
        x = self.emb(idx)
        for b in self.blocks:
            x = b(x, self.cos, self.sin)
        return F.cross_entropy(self.out(self.norm(x)).view(-1, vocab), tgt.view(-1))


m = Llama()
opt = torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
idx = torch.randint(0, vocab, (B, T))
tgt = torch.randint(0, vocab, (B, T))
def step():
    opt.zero_grad(set_to_none=True)
    with autocast():
        loss = m(idx, tgt)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    opt.step()
step()  # warm-up (allocations, thread pool)
t0 = time.time()
for _ in range(steps):
    step()
print(f"torch {B * T * steps / (time.time() - t0):.1f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}")
