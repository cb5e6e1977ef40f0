#!/usr/bin/python3
"""PyTorch float64 oracle for quantization-aware training, transcribed from LLM-QAT
(facebookresearch/LLM-QAT): models/utils_quant.py's SymQuantizer (per-row MinMax with the
1e-6 guards, round half to even, the backward zeroing the gradient where the input is beyond
clip_val [-2, 2]) and QuantizeLinear (weights per output channel, SymQuantizer at >= 3 bits and
the 2-bit branch with a straight-through estimator; inputs per token at 3..31 bits), K and V
through SymQuantizer as models/modeling_llama_quant.py does, and utils/kd_trainer.py's loss
F.kl_div(log_softmax(student), softmax(teacher), reduction="batchmean").

Differences from LLM-QAT, all as llmq defines QAT (docs/qat.md): K is quantized after RoPE and
K/V per token and KV head (the cache llmq runs holds rotated keys per head; LLM-QAT quantizes
the projection per token before RoPE); the KL is divided by the token count, not the sequence
count; kd_weight mixes in the cross-entropy to the targets: w KL + (1 - w) CE.

usage: qat_ref.py STUDENT_DIR TEACHER_DIR BATCH.json OUT.bin
BATCH.json: {"tokens": [[ids]...], "targets": [[ids]...], "names": [tensor names],
             "w_bits", "a_bits", "kv_bits" (32: off), "kd_weight"}
OUT.bin float64: the loss, the KL and CE terms, then each named tensor's gradient.
"""
import json, os, sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_ref  # noqa: E402

torch.set_default_dtype(torch.float64)


class SymQuantizer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, clip_val, num_bits, layerwise):
        ctx.save_for_backward(input, clip_val)
        if layerwise:
            max_input = torch.max(torch.abs(input)).expand_as(input)
        else:
            if input.ndimension() <= 3:
                max_input = torch.max(torch.abs(input), dim=-1, keepdim=True)[0].expand_as(input).detach()
            else:
                raise ValueError
        s = (2 ** (num_bits - 1) - 1) / (max_input + 1e-6)
        return torch.round(input * s).div(s + 1e-6)

    @staticmethod
    def backward(ctx, grad_output):
        input, clip_val = ctx.saved_tensors
        grad_input = grad_output.clone()
        grad_input[input.ge(clip_val[1])] = 0
        grad_input[input.le(clip_val[0])] = 0
        return grad_input, None, None, None


def quantize_weight(w, w_bits):
    if w_bits >= 32:
        return w
    if w_bits >= 3:
        return SymQuantizer.apply(w, torch.tensor([-2.0, 2.0]), w_bits, False)
    num_bits = 2 ** (w_bits - 1)
    clip_val = 1 - 1e-2
    scaling_factor = 2 * torch.mean(abs(w), dim=1, keepdim=True).detach()
    q = scaling_factor * (torch.round(torch.clamp(w / scaling_factor, -clip_val, clip_val) * num_bits - 0.5) + 0.5) / num_bits
    return q.detach() - w.detach() + w


def main():
    sdir, tdir, batch_path, out_path = sys.argv[1:5]
    c = json.load(open(os.path.join(sdir, "config.json")))
    S = llama_ref.load_weights(sdir)
    Tw = llama_ref.load_weights(tdir)
    for t in S.values():
        t.requires_grad_(True)
    b = json.load(open(batch_path))
    wb, ab, kvb, kdw = b["w_bits"], b["a_bits"], b["kv_bits"], b["kd_weight"]
    clip = torch.tensor([-2.0, 2.0])

    def lin(name, x):
        if ab < 32 and ab > 2:
            x = SymQuantizer.apply(x, clip, ab, False)
        return F.linear(x, quantize_weight(S[name], wb))

    def kv(k, v):
        if kvb >= 32:
            return k, v
        return SymQuantizer.apply(k, clip, kvb, False), SymQuantizer.apply(v, clip, kvb, False)

    student = torch.cat([llama_ref.forward(c, S, seq, lin, kv) for seq in b["tokens"]])
    with torch.no_grad():
        teacher = torch.cat([llama_ref.forward(c, Tw, seq) for seq in b["tokens"]])
    n_tok = student.shape[0]
    # kd_trainer.py's ce_loss on (batch, T, V) logits: batchmean divides by the batch; here
    # the rows are the tokens, so the same call divides by the token count.
    kl = F.kl_div(F.log_softmax(student, dim=-1), F.softmax(teacher, dim=-1), reduction="batchmean")
    targets = torch.tensor([t for row in b["targets"] for t in row])
    ce = F.cross_entropy(student, targets, ignore_index=-1)
    loss = kdw * kl + (1 - kdw) * ce
    loss.backward()
    out = [loss.detach().reshape(1), kl.detach().reshape(1), ce.detach().reshape(1)]
    out += [S[n].grad.reshape(-1) for n in b["names"]]
    assert n_tok == sum(len(r) for r in b["tokens"])
    with open(out_path, "wb") as f:
        f.write(torch.cat(out).numpy().astype("<f8").tobytes())


if __name__ == "__main__":
    main()
