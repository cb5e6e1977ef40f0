#!/usr/bin/python3
"""PyTorch float64 oracle for training: the loss of a batch under the reference Llama of
llama_ref.py (Meta's architecture, HF checkpoints), every parameter's gradient by autograd,
and the parameters after one torch.optim.AdamW step.

usage: train_ref.py MODEL_DIR BATCH.json OUT.bin
BATCH.json: {"tokens": [[ids]...], "targets": [[ids, -1 = ignore]...], "names": [tensor names],
             "adamw": {"lr", "beta1", "beta2", "eps", "weight_decay", "no_decay": [names]}}
OUT.bin: float64 loss, then each named tensor's gradient, then each named tensor after
the AdamW step, flattened in the order of "names".
"""
import json, os, sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_ref  # noqa: E402

torch.set_default_dtype(torch.float64)


def main():
    d, batch_path, out_path = sys.argv[1:4]
    c = json.load(open(os.path.join(d, "config.json")))
    W = llama_ref.load_weights(d)
    for t in W.values():
        t.requires_grad_(True)
    b = json.load(open(batch_path))
    logits = torch.cat([llama_ref.forward(c, W, s) for s in b["tokens"]])
    targets = torch.tensor([t for row in b["targets"] for t in row])
    loss = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-1)
    loss.backward()
    names = b["names"]
    out = [loss.detach().reshape(1)] + [W[n].grad.reshape(-1) for n in names]
    a = b["adamw"]
    nd = set(a["no_decay"])
    groups = [{"params": [W[n] for n in names if n not in nd], "weight_decay": a["weight_decay"]},
              {"params": [W[n] for n in names if n in nd], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=a["lr"], betas=(a["beta1"], a["beta2"]), eps=a["eps"], foreach=False)
    opt.step()
    out += [W[n].detach().reshape(-1) for n in names]
    with open(out_path, "wb") as f:
        f.write(torch.cat(out).numpy().astype("<f8").tobytes())


if __name__ == "__main__":
    main()
