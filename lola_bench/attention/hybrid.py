"""Dense, differentiable window + linear attention (LoLA with lambda = 0) for training and teacher matching.

Same semantics as the reference with ``sparse = 0`` (block window of the config's cadence, the combine
formula, exact softmax for queries whose linear memory is still empty), written as one masked
quadratic computation so autograd can train feature maps and window factors through it. Memory is
O(L^2) per head: meant for training sequences (~1K tokens), not long-context inference.
``chunked_hybrid_attention`` is the same function one chunk at a time with running linear sums (linearization's
stage-1 loss uses it; ``hybrid_attention`` is its dense specification).
"""

from __future__ import annotations

import torch

from .common import LolaParams, mix


def block_masks(cfg, L: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(soft, lin) boolean (L, L) masks: softmax over the window [window_start(chunk(t)), t] and the first
    ``cfg.sinks`` positions, linear over the other older keys."""
    t = torch.arange(L, device=device)
    ws = ((t // cfg.chunk_size) * cfg.chunk_size - cfg.window).clamp(min=0).view(-1, 1)
    j = t.view(1, -1)
    sink = j < cfg.sinks
    soft = ((j >= ws) | sink) & (j <= t.view(-1, 1))
    return soft, (j < ws) & ~sink


def hybrid_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: LolaParams) -> torch.Tensor:
    """q (B, Hq, L, d), k/v (B, Hkv, L, d) after RoPE -> (B, Hq, L, d). Differentiable in the feature maps and
    window factors."""
    cfg = params.cfg
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    L = q.shape[2]
    soft, lin = block_masks(cfg, L, q.device)
    s = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    s = s.masked_fill(~soft, float("-inf"))
    sm_max = s.amax(-1, keepdim=True)
    e = torch.exp(s - sm_max)
    a = torch.matmul(params.feature_map_q(q), params.feature_map_k(k).transpose(-1, -2)) * lin
    factor = params.window_factors.view(1, -1, 1, 1).to(q.dtype)
    sm_num, sm_den = torch.matmul(e, v), e.sum(-1, keepdim=True)
    lin_num, lin_den = torch.matmul(a, v), a.sum(-1, keepdim=True)
    y = mix(cfg.combine, factor, sm_num, sm_den, lin_num, lin_den, cfg.eps, sm_max)
    has_lin = lin.any(-1).view(1, 1, L, 1)
    return torch.where(has_lin, y, sm_num / sm_den)


def chunked_hybrid_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params) -> torch.Tensor:
    """``hybrid_attention`` computed one chunk at a time: the same output and gradients (up to float rounding).

    Each chunk attends with softmax to its window keys only and reads the older keys from running sums
    H = sum phi(k) v^T, s = sum phi(k), so the work is O(L (C + W) d + L F d) instead of O(L^2 F): at seq_len 1024
    this makes the stage-1 loss cheap next to the frozen forward.
    """
    cfg = params.cfg
    C, W = cfg.chunk_size, cfg.window
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    B, Hq, L, d = q.shape
    phi_q, phi_k = params.feature_map_q(q), params.feature_map_k(k)
    factor = params.window_factors.view(1, -1, 1, 1).to(q.dtype)
    state = q.new_zeros(B, Hq, phi_k.shape[-1], d)
    norm = q.new_zeros(B, Hq, phi_k.shape[-1], 1)
    S = cfg.sinks
    folded, outs = 0, []
    for c0 in range(0, L, C):
        c1 = min(c0 + C, L)
        ws = max(0, c0 - W)
        lo = max(folded, min(S, ws))  # sinks never join the linear sums
        if ws > lo:  # keys leaving the window join the linear sums (never in place: autograd)
            pk = phi_k[:, :, lo:ws].transpose(-1, -2)
            state = state + pk @ v[:, :, lo:ws]
            norm = norm + pk.sum(-1, keepdim=True)
        folded = max(folded, ws)
        keys = torch.arange(ws, c1, device=q.device)
        if min(S, ws):  # the sinks that have left the window, attended exactly
            keys = torch.cat([torch.arange(min(S, ws), device=q.device), keys])
        causal = keys.view(1, -1) <= torch.arange(c0, c1, device=q.device).view(-1, 1)
        s = ((q[:, :, c0:c1] @ k[:, :, keys].transpose(-1, -2)) * d ** -0.5).masked_fill(~causal, float("-inf"))
        sm_max = s.amax(-1, keepdim=True)
        e = torch.exp(s - sm_max)
        sm_num, sm_den = e @ v[:, :, keys], e.sum(-1, keepdim=True)
        if folded <= S:  # nothing folded yet
            outs.append(sm_num / sm_den)
            continue
        pq = phi_q[:, :, c0:c1]
        lin_num, lin_den = pq @ state, pq @ norm
        outs.append(mix(cfg.combine, factor, sm_num, sm_den, lin_num, lin_den, cfg.eps, sm_max))
    return torch.cat(outs, dim=2)
