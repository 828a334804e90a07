"""The chunk-boundary merge of a ``StaticLolaState`` in place, of fixed shapes, reading no value on the host: what a
CUDA graph can capture and replay next to the decode step (issue #16 items 2-3: the merge amortized per token).

Once a decode is past its first boundaries every merge has the same shape: the sparse cache is full (``cap_s`` =
sparse + sinks pairs, in position order) and the chunk's ``chunk`` oldest window pairs leave, so the candidates are
always the slots [0, cap_s + chunk) in position order, ``cap_s`` of them stay and ``chunk`` are folded into (H, s)
(dropped under eviction). ``static_merge`` runs that boundary on the buffers: score the candidates (the scorer on
phi(k) computed for them), choose and fold with ``common.choose_and_fold``, as ``evict_before`` does (``split_topk``'s
sort path on accelerators; on CPU its one-topk path reads one flag on the host), write the kept pairs back into the
sparse slots in position order, shift the window slots down by a chunk and advance the device-side window start.
Same selection, state and counts as ``evict_before`` on the equivalent ``LolaState`` (tests/attention/
test_static_merge.py); the host mirrors are advanced by ``advance_host_merge``.

``steady_reason`` says why a boundary is not of that shape (the earlier boundaries, a state capped by ``max_len``,
scorers that need attention mass); ``StaticLolaState.prepare`` then runs the general merge through a ``LolaState``.
``steps_to_steady`` foresees, on the host, how many steps come before the first steady boundary (a graphed decode
warms up through it, so that the merge's capture is not timed).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from .common import choose_and_fold, take_rows


def steady_reason(st, window_start: int) -> str | None:
    """Why the boundary to ``window_start`` is not a steady one (None when it is): host mirrors only."""
    cfg = st.params.cfg
    full = cfg.sparse + cfg.sinks
    if st.params.scorer.needs_attention_mass:
        return f"scorer {cfg.scorer!r} reads attention mass"
    if st.cap_s != full or st.cap_w != cfg.window + cfg.chunk_size:
        return "the state's capacity is capped by max_len"
    if st.sp_n_host != full:
        return f"the sparse cache holds {st.sp_n_host} of {full} pairs"
    if window_start - st.win_start_host != cfg.chunk_size:   # (a full cache means window_start >= sinks already)
        return f"{window_start - st.win_start_host} pairs leave the window, not a chunk of {cfg.chunk_size}"
    return None


def steps_to_steady(params, pos: int, win_start: int, sp_n: int, limit: int) -> int | None:
    """Decode steps before the first steady boundary (``steady_reason``) of a state at position ``pos`` whose window
    starts at ``win_start`` and whose sparse cache holds ``sp_n`` pairs, looking ``limit`` steps ahead (None if none
    comes): host arithmetic, the earlier boundaries moving the counts as ``evict_before`` does. Uncapped slots: a
    state capped by ``max_len`` has no steady boundary at all."""
    cfg = params.cfg
    c = cfg.chunk_size
    mirror = SimpleNamespace(params=params, cap_s=cfg.sparse + cfg.sinks, cap_w=cfg.window + c)
    for p in range(-(-pos // c) * c, pos + limit, c):
        ws = cfg.window_start(p // c)
        if ws <= win_start:
            continue
        mirror.sp_n_host, mirror.win_start_host, mirror.pos_host = sp_n, win_start, p
        if steady_reason(mirror, ws) is None:
            return p - pos
        sp_n, win_start = cfg.keep(ws, sp_n + ws - win_start), ws      # ws < p: every pair before it leaves
    return None


def static_merge(st) -> None:
    """The steady chunk-boundary merge on ``st``'s buffers (``steady_reason`` must be None): device work only, fixed
    shapes; the window start on the device advances by a chunk. The host mirrors: ``advance_host_merge``."""
    p = st.params
    cfg = p.cfg
    cs, c, cap_w = st.cap_s, cfg.chunk_size, st.cap_w
    n = cs + c
    # sparse slots, then the chunk leaving the window (copies: the same memory layout as evict_before's candidates,
    # so the same arithmetic to the bit)
    cand_k, cand_v = st.k[:, :, :n].contiguous(), st.v[:, :, :n].contiguous()
    b, hs = cand_k.shape[:2]
    win_pos = st.win_start + torch.arange(c, device=st.k.device)     # (c,) positions of the leaving pairs
    cand_pos = torch.cat([st.sp_pos, win_pos.view(1, 1, c).expand(b, hs, c)], dim=2)
    # steady: the window starts past the sinks, so all of them are pinned
    idx = choose_and_fold(st, p, cand_k, cand_v, cand_pos, None, cs, cfg.sinks)
    if cs:
        st.k[:, :, :cs].copy_(take_rows(cand_k, idx))
        st.v[:, :, :cs].copy_(take_rows(cand_v, idx))
        st.sp_pos.copy_(cand_pos.gather(2, idx))
    # the window slots move down by a chunk (slot cs + j holds position win_start + j); the last chunk of slots
    # keeps stale pairs, masked until the steps overwrite them
    for buf in (st.k, st.v):
        buf[:, :, cs:cs + cap_w - c].copy_(buf[:, :, cs + c:cs + cap_w].clone())
    st.win_start.add_(c)
    if cfg.fold:
        st.has_lin.fill_(True)


def advance_host_merge(st) -> None:
    """The host mirrors after a ``static_merge``: the window start moves by a chunk, a chunk of pairs was folded."""
    c = st.params.cfg.chunk_size
    st.win_start_host += c
    if st.params.cfg.fold:
        st.n_folded += c
