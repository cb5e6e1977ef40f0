#!/usr/bin/python3
"""AWQ and SmoothQuant reference computations in PyTorch, written from the authors' code
(mit-han-lab/llm-awq awq/quantize/auto_scale.py _search_module_scale, auto_clip.py
auto_clip_layer, quantizer.py pseudo_quantize_tensor; mit-han-lab/smoothquant smooth.py
smooth_ln_fcs), for tests/calibrated_test.cpp.

usage: awq_ref.py DIR n K F bits group sym alpha
DIR holds raw little-endian f32 arrays: x (n, K), wg (F, K), wu (F, K), wd (K, F).
Prints JSON: the scale search over an MLP (gate/up scaled, the MLP's output inspected),
the clipping search of wd on its inputs h = silu(x wg^T) * (x wu^T), and SmoothQuant's
factors for (gate, up) with activation maxima max |x|.
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch


def pseudo_quantize_tensor(w, n_bit, q_group_size, zero_point):
    org_w_shape = w.shape
    if q_group_size > 0:
        w = w.reshape(-1, q_group_size)
    if zero_point:
        max_val = w.amax(dim=1, keepdim=True)
        min_val = w.amin(dim=1, keepdim=True)
        max_int = 2 ** n_bit - 1
        min_int = 0
        scales = (max_val - min_val).clamp(min=1e-5) / max_int
        zeros = (-torch.round(min_val / scales)).clamp_(min_int, max_int)
        w = (torch.clamp(torch.round(w / scales) + zeros, min_int, max_int) - zeros) * scales
    else:
        max_val = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-5)
        max_int = 2 ** (n_bit - 1) - 1
        min_int = -(2 ** (n_bit - 1))
        scales = max_val / max_int
        w = torch.clamp(torch.round(w / scales), min_int, max_int) * scales
    return w.reshape(org_w_shape)


def mlp(x, wg, wu, wd):
    return (torch.nn.functional.silu(x @ wg.T) * (x @ wu.T)) @ wd.T


def search_scale(x, wg, wu, wd, q):
    org_out = mlp(x, wg, wu, wd)
    x_max = x.abs().view(-1, x.shape[-1]).mean(0)
    best_error, best_ratio, best_scales, history = float("inf"), -1, None, []
    n_grid = 20
    for r in range(n_grid):
        ratio = r * 1 / n_grid
        scales = x_max.pow(ratio).clamp(min=1e-4).view(-1)
        scales = scales / (scales.max() * scales.min()).sqrt()
        g = q(wg * scales.view(1, -1)) / scales.view(1, -1)
        u = q(wu * scales.view(1, -1)) / scales.view(1, -1)
        out = mlp(x, g, u, wd)
        loss = (org_out - out).float().pow(2).mean().item()
        history.append(loss)
        if loss < best_error:
            best_error, best_ratio, best_scales = loss, r, scales.clone()
    return best_ratio, best_scales, history


def auto_clip_layer(w, input_feat, q, group_size, n_grid=20, max_shrink=0.5, n_sample_token=512):
    input_feat = input_feat.view(-1, input_feat.shape[-1])
    input_feat = input_feat.reshape(1, input_feat.shape[0], -1, group_size)
    input_feat = input_feat[:, 0::input_feat.shape[1] // n_sample_token]
    w = w.reshape(w.shape[0], 1, -1, group_size)
    oc_batch_size = 256 if w.shape[0] % 256 == 0 else 64
    assert w.shape[0] % oc_batch_size == 0
    w_all = w
    best_max_val_all = []
    for i_b in range(w.shape[0] // oc_batch_size):
        w = w_all[i_b * oc_batch_size:(i_b + 1) * oc_batch_size]
        org_max_val = w.abs().amax(dim=-1, keepdim=True)
        best_max_val = org_max_val.clone()
        min_errs = torch.ones_like(org_max_val) * 1e9
        org_out = (input_feat * w).sum(dim=-1)
        for i_s in range(int(max_shrink * n_grid)):
            max_val = org_max_val * (1 - i_s / n_grid)
            min_val = -max_val
            cur_w = torch.clamp(w, min_val, max_val)
            q_w = q(cur_w)
            cur_out = (input_feat * q_w).sum(dim=-1)
            err = (cur_out - org_out).pow(2).mean(dim=1).view(min_errs.shape)
            cur_best_idx = err < min_errs
            min_errs[cur_best_idx] = err[cur_best_idx]
            best_max_val[cur_best_idx] = max_val[cur_best_idx]
        best_max_val_all.append(best_max_val)
    return torch.cat(best_max_val_all, dim=0).squeeze(1).squeeze(-1)  # (co, n_group)


def smooth_scales(act_scales, fcs, alpha):
    weight_scales = torch.cat([fc.abs().max(dim=0, keepdim=True)[0] for fc in fcs], dim=0)
    weight_scales = weight_scales.max(dim=0)[0].clamp(min=1e-5)
    return (act_scales.pow(alpha) / weight_scales.pow(1 - alpha)).clamp(min=1e-5)


def main():
    d = Path(sys.argv[1])
    n, K, F, bits, group = (int(v) for v in sys.argv[2:7])
    sym, alpha = sys.argv[7] == "1", float(sys.argv[8])
    torch.set_num_threads(1)
    ld = lambda name, shape: torch.from_numpy(np.fromfile(d / name, dtype="<f4").reshape(shape).copy())
    x, wg, wu, wd = ld("x", (n, K)), ld("wg", (F, K)), ld("wu", (F, K)), ld("wd", (K, F))
    q = lambda w: pseudo_quantize_tensor(w, bits, group, not sym)
    best, scales, history = search_scale(x, wg, wu, wd, q)
    h = torch.nn.functional.silu(x @ wg.T) * (x @ wu.T)
    clip = auto_clip_layer(wd, h, q, group)
    smooth = smooth_scales(x.abs().max(dim=0)[0], [wg, wu], alpha)
    print(json.dumps({"best": best, "scales": scales.tolist(), "losses": history,
                      "clip": clip.reshape(-1).tolist(), "smooth": smooth.tolist()}))


if __name__ == "__main__":
    main()
