"""Chunked prefill: process any block of new tokens, one chunk-aligned segment at a time.

``lola_chunked`` is the prefill the model runs: the batched path (``batched.lola_batched``: selection pass, then the
attention of many chunks at once) for every scorer that reads no attention mass, else the chunk loop; under eviction
with ``evict_at = prompt_end`` the first call (empty state) is full attention, then one compression
(``prompt_end.prefill_then_compress``), and every later call runs the loop without evicting anything
(``common.prompt_compressed``: the window grows by the call's tokens).
``lola_chunked_loop`` is the loop: per segment a handful of batched tensor ops (evict/merge once, then one attention
call for all queries of the segment), so the Python loop runs once per chunk, not per token. Both leave the same
state (up to float rounding).
"""

from __future__ import annotations

import torch

from .batched import lola_batched
from .common import LolaParams, append_window, attend, ensure_state, evict_before, prompt_compressed
from .prompt_end import prefill_then_compress
from .state import LolaState

# The batched path keeps one linear state (H, s) per chunk of a call until the call ends: calls are cut into blocks
# of whole chunks whose states fit this budget (a 32K prompt of an 8B shape would otherwise hold GiBs per layer).
STATE_BUDGET_BYTES = 256 * 2**20


def lola_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LolaState,
                 params: LolaParams) -> torch.Tensor:
    """LoLA attention for L new tokens continuing ``state`` (updated in place). Returns (B, Hq, L, d)."""
    if params.cfg.evict_at == "prompt_end" and q.shape[2] > 0:
        if state.pos == 0:
            return prefill_then_compress(q, k, v, state, params)
        return lola_chunked_loop(q, k, v, state, params)          # compressed: no eviction, the window grows
    if params.scorer.needs_attention_mass:
        return lola_chunked_loop(q, k, v, state, params)
    C, total = params.cfg.chunk_size, q.shape[2]
    per_chunk = q.shape[0] * params.num_heads * params.feature_dim * (params.head_dim + 1) * 4   # one fp32 (H, s)
    n = max(1, STATE_BUDGET_BYTES // max(per_chunk, 1))          # chunks per block
    start = state.pos
    if (start % C) + total <= n * C:
        return lola_batched(q, k, v, state, params)
    outs, i = [], 0
    while i < total:
        p = start + i
        seg = min(total - i, (p // C + n) * C - p)                # up to the n-th chunk boundary from here
        outs.append(lola_batched(q[:, :, i:i + seg], k[:, :, i:i + seg], v[:, :, i:i + seg], state, params))
        i += seg
    return torch.cat(outs, dim=2)


def lola_chunked_loop(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LolaState,
                      params: LolaParams) -> torch.Tensor:
    """``lola_chunked`` as a Python loop over chunks (any scorer). A compressed prompt_end state is never evicted
    again (``common.prompt_compressed``): its queries see the kept prompt pairs and the whole (growing) window."""
    ensure_state(state, k, params)
    cfg = params.cfg
    frozen = prompt_compressed(state, params)
    C = cfg.chunk_size
    start, total = state.pos, q.shape[2]
    outs = []
    i = 0
    while i < total:
        p = start + i
        c = p // C
        seg = min(total - i, (c + 1) * C - p)  # up to the end of this chunk
        if not frozen:
            evict_before(state, params, cfg.window_start(c))
        append_window(state, params, k[:, :, i:i + seg], v[:, :, i:i + seg])
        outs.append(attend(q[:, :, i:i + seg], state, params, p, causal=True))
        i += seg
    return torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
