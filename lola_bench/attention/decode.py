"""Decode: one new token per call. Runs the chunk-boundary update when the token starts a new chunk, except for an
``evict_at = prompt_end`` state, which evicts nothing after its one compression (``common.prompt_compressed``): the
new pair joins the window, which grows, and the query attends to the kept prompt pairs and the whole window."""

from __future__ import annotations

from typing import Callable

import torch

from .common import LolaParams, append_window, attend, ensure_state, evict_before, prompt_compressed
from .state import LolaState

Evict = Callable[[LolaState, LolaParams, int], None]                               # (state, params, window_start)
Attend = Callable[[torch.Tensor, LolaState, LolaParams, int], torch.Tensor]       # (q, state, params, q_pos) -> out


def decode_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LolaState, params: LolaParams,
                evict: Evict, attend_one: Attend) -> torch.Tensor:
    """The host-side bookkeeping of one decode step, shared by the torch and Triton paths: initialise the state,
    ``evict`` the pairs leaving the window when the token starts a new chunk (a no-op otherwise), append the new pair
    to the window, then ``attend_one`` with the query at its position. A compressed prompt_end state is never
    evicted again (``common.prompt_compressed``). Returns (B, Hq, 1, d)."""
    if q.shape[2] != 1:
        raise ValueError(f"lola_decode takes one token at a time, got {q.shape[2]}")
    ensure_state(state, k, params)
    p = state.pos
    if not prompt_compressed(state, params):
        evict(state, params, params.cfg.window_start(p // params.cfg.chunk_size))
    append_window(state, params, k, v)
    return attend_one(q, state, params, p)


def _attend_one(q: torch.Tensor, state: LolaState, params: LolaParams, p: int) -> torch.Tensor:
    return attend(q, state, params, p, causal=False)


def lola_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LolaState,
                params: LolaParams) -> torch.Tensor:
    """LoLA attention for exactly one new token (L = 1). Returns (B, Hq, 1, d)."""
    return decode_step(q, k, v, state, params, evict_before, _attend_one)
