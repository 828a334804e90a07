"""Dense, differentiable window + linear attention (LoLA with lambda = 0) for training and teacher matching.

Same semantics as the reference with ``sparse = 0`` (block window of the config's cadence, the combine
formula, exact softmax for queries whose linear memory is still empty), written as one masked
quadratic computation so autograd can train feature maps and window factors through it. Memory is
O(L^2) per head: meant for training sequences (~1K tokens), not long-context inference.
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
