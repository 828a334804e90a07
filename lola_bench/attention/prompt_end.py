"""Eviction after a full prefill (``LolaConfig.evict_at == "prompt_end"``): SnapKV's and H2O's own protocol.

``prefill_then_compress`` is what the first call of a sequence (state empty: the prompt) runs under prompt_end:

1. exact causal softmax attention over the whole prompt (torch SDPA), so every prompt query, the last one (which
   picks the first generated token) included, sees every key;
2. the attention mass the scorer reads, from full-attention probabilities (``full_mass``, in blocks of queries so
   that no (queries x keys) matrix beyond ``MASS_BUDGET_BYTES`` (on CPU ``CPU_MASS_BUDGET_BYTES``) is held; a block
   scores only the keys up to its last query): ``attention`` (H2O) the mass every prompt
   query paid each key; ``snapkv`` the mass of the prompt's last ``window`` queries (the observation window; its
   scorer average-pools it, as SnapKV does). Summed over the queries, averaged over the query heads of a storage head;
3. one compression into the LolaState: the prompt's pairs enter the window, then ``common.evict_before`` at the
   window start ws of the chunk holding the next position drops all but ``LolaConfig.keep`` of the pairs below it
   (sinks pinned), exactly as a chunk boundary does.

That is the only eviction the sequence ever sees (SnapKV's code and kvpress compress the prompt once, then decode with
a growing cache): from here on ``common.prompt_compressed`` is true and every later token (decode steps, continuation
calls) is kept exactly. The window is then not a sliding window any more: it holds every position from ws on and grows
by one pair per token, and every later query attends with softmax to the kept prompt pairs plus every key from ws up
to itself. So the cache after the prompt plus N more tokens is the compressed prompt plus those N pairs. No attention
mass is tracked after the compression (nothing would read it): the state drops it (``win_acc``/``sp_acc`` None).

``reference.lola_reference(..., prompt_len=P)`` is the specification. Peak memory is the prompt's full K/V (and
SDPA's workspace) during the call; afterwards the state holds only the compressed cache (the window is copied out
of the prompt's tensors, so they can be freed), which then grows with every later token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import LolaParams, append_window, ensure_state, evict_before
from .state import LolaState, state_dtype

MASS_BUDGET_BYTES = 256 * 2**20     # the largest block of attention probabilities ``full_mass`` holds at once
# on CPU, smaller blocks that stay near the caches (memory-bound softmax passes; more of the causal upper triangle is
# skipped): several times faster than 256 MiB blocks for the embedded model's layers at 4K
CPU_MASS_BUDGET_BYTES = 4 * 2**20


def full_mass(q: torch.Tensor, k: torch.Tensor, t0: int, t1: int, params: LolaParams) -> torch.Tensor:
    """(B, Hs, P): for every key j of the P-token prompt, sum over queries t0 <= t < t1 of the causal full-attention
    probability softmax_j(q_t . k_j / sqrt d), averaged over the query heads of each storage head (state dtype).
    q (B, Hq, P, d), k (B, Hkv, P, d)."""
    b, hq, P, d = q.shape
    hkv = k.shape[1]
    rep = hq // hkv
    sd = state_dtype(q.dtype)
    acc = torch.zeros(b, hkv, rep, P, dtype=sd, device=q.device)
    kt = k.to(sd).transpose(-1, -2)                                      # (B, Hkv, d, P)
    keys = torch.arange(P, device=q.device)
    budget = MASS_BUDGET_BYTES if q.device.type != "cpu" else min(MASS_BUDGET_BYTES, CPU_MASS_BUDGET_BYTES)
    step = max(1, budget // max(1, b * hq * P * torch.empty(0, dtype=sd).element_size()))
    for i in range(t0, t1, step):
        j = min(t1, i + step)
        n = j - i
        qg = q[:, :, i:j].to(sd).reshape(b, hkv, rep * n, d)            # a KV head's query heads are contiguous
        # the keys after the block's last query get no probability from it (causal): only keys [0, j) are scored
        logits = torch.matmul(qg, kt[..., :j]) * d ** -0.5               # (B, Hkv, rep * n, j)
        future = keys[:j].view(1, -1) > torch.arange(i, j, device=q.device).repeat(rep).view(-1, 1)
        p = torch.softmax(logits.masked_fill_(future, float("-inf")), dim=-1)
        acc[..., :j] += p.view(b, hkv, rep, n, j).sum(dim=3)
    per_query_head = acc.view(b, hq, P)
    g = params.group
    return per_query_head if g == 1 else per_query_head.view(b, hq // g, g, P).mean(dim=2)


def _full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    rep = q.shape[1] // k.shape[1]
    if rep > 1:
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def prefill_then_compress(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LolaState,
                          params: LolaParams) -> torch.Tensor:
    """The prompt (the first call: ``state.pos == 0``) with exact full attention, then the one compression of the
    cache into ``state`` (see the module doc). Returns (B, Hq, P, d) in q's dtype."""
    ensure_state(state, k, params)
    if state.pos != 0:
        raise ValueError(f"prefill_then_compress reads a whole prompt into an empty state (pos {state.pos})")
    cfg, scorer = params.cfg, params.scorer
    P = q.shape[2]
    out = _full_attention(q, k, v)
    append_window(state, params, k, v)                                   # every prompt pair in the window
    C = cfg.chunk_size
    ws = cfg.window_start(P // C)                                        # the chunk holding the next position
    if scorer.needs_attention_mass:                                      # what the scorer reads
        state.win_acc = full_mass(q, k, max(0, P - cfg.window) if scorer.mass_per_chunk else 0, P, params)
    evict_before(state, params, ws)
    state.win_acc = state.sp_acc = None                                  # never evicted again: no mass to track
    # the window (and an empty sparse cache) are views of the prompt's K/V: copy them out so that the full cache is
    # not kept alive
    state.win_k, state.win_v, state.win_pos = state.win_k.clone(), state.win_v.clone(), state.win_pos.clone()
    state.sp_k, state.sp_v = state.sp_k.clone(), state.sp_v.clone()
    return out
