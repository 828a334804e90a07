"""Decode: one new token per call. Runs the chunk-boundary update when the token starts a new chunk."""

from __future__ import annotations

import torch

from .common import LolaParams, append_window, attend, ensure_state, evict_before
from .state import LolaState


def lola_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LolaState,
                params: LolaParams) -> torch.Tensor:
    """LoLA attention for exactly one new token (L = 1). Returns (B, Hq, 1, d)."""
    if q.shape[2] != 1:
        raise ValueError(f"lola_decode takes one token at a time, got {q.shape[2]}")
    ensure_state(state, k, params)
    p = state.pos
    evict_before(state, params, params.cfg.window_start(p // params.cfg.chunk_size))
    append_window(state, params, k, v)
    return attend(q, state, params, p, causal=False)
