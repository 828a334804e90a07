"""The selection pass of the batched prefill: every chunk boundary of a block of new tokens, in order, no attention.

At each boundary the pairs leaving the window compete with the cached pairs for the sparse cache (scored against the
linear state as it stands), the losers are folded into (H, s) or dropped, exactly as ``common.evict_before`` does.
No query is needed for that as long as the scorer reads no attention mass (``Scorer.needs_attention_mass``), so the
pass runs first and records, per segment of the block, which pairs the segment's queries see exactly (indices into
a table [sparse cache at the start | window at the start | new keys]) and the linear state they read. The queries of
all segments are then answered in batches (``batched``).

Feature-mapped keys are computed once per pair (when it leaves the window, or for the cached pairs at the first scored
boundary of the call) and kept, with the candidates' keys, values and positions, in fixed slots (``Slots``): a boundary
writes the leaving rows into the slots its losers freed, instead of concatenating and re-gathering the whole cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .common import LolaParams, split_topk, take_rows, to_storage
from .scorers import ScoreContext, expand_heads
from .state import LolaState


@dataclass
class Segment:
    """The queries at positions [lo, hi) (one chunk or part of one) and what they attend to."""
    lo: int
    hi: int
    ws: int                       # window start: the window part is the positions [ws, hi)
    sp_idx: torch.Tensor          # (B, Hs, ns) table indices of the sparse cache, ascending positions
    H: torch.Tensor               # (B, Hq, F, d) linear state
    s: torch.Tensor               # (B, Hq, F)
    folded: bool                  # anything folded so far (n_folded > 0): the linear part is read
    exact: bool                   # every earlier pair is still held exactly (nothing folded or dropped)


@dataclass
class Table:
    """Keys, values and positions of [sparse cache at the start | window at the start | new keys], per storage head."""
    k: torch.Tensor               # (B, Hs, N, d)
    v: torch.Tensor               # (B, Hs, N, d)
    pos: torch.Tensor             # (B, Hs, N)
    ns0: int                      # sparse pairs at the start
    p0: int                       # position of table index ns0 (the first window position)
    segments: list[Segment] = field(default_factory=list)
    slots: Slots | None = None    # the candidates' rows at the last scored boundary (None: no boundary scored)
    sp_slot: torch.Tensor | None = None   # (B, Hs, ns) slot of each pair of the final sparse cache

    def index(self, position: int) -> int:
        """Table index of a window / new position."""
        return self.ns0 + position - self.p0


def build_table(k: torch.Tensor, v: torch.Tensor, state: LolaState, params: LolaParams) -> Table:
    b, hs = state.win_k.shape[:2]
    ns0, nw0 = state.sp_k.shape[2], state.win_k.shape[2]
    p0 = state.pos - nw0
    new_pos = torch.arange(p0, state.pos + k.shape[2], device=k.device).view(1, 1, -1).expand(b, hs, -1)
    return Table(k=torch.cat([state.sp_k, state.win_k, to_storage(k, params)], dim=2),
                 v=torch.cat([state.sp_v, state.win_v, to_storage(v, params)], dim=2),
                 pos=torch.cat([state.sp_pos, new_pos], dim=2), ns0=ns0, p0=p0)


def select_all(k: torch.Tensor, v: torch.Tensor, state: LolaState, params: LolaParams) -> Table:
    """Run every chunk boundary of the L new tokens (k, v: (B, Hkv, L, d)) on ``state`` and record the segments.

    Leaves ``state`` as the chunk loop would after the same tokens (window, sparse cache, H, s, counters)."""
    cfg, g = params.cfg, params.group
    C, L = cfg.chunk_size, k.shape[2]
    tab = build_table(k, v, state, params)
    b, hs = tab.k.shape[:2]
    fold_on = cfg.fold
    start = state.pos
    sp_idx = torch.arange(tab.ns0, device=k.device).view(1, 1, -1).expand(b, hs, -1)
    slots = None                  # the candidates' rows in fixed slots, made at the first scored boundary
    sp_slot = None                # (B, Hs, ns) slot of each cached pair, aligned with sp_idx
    H, s, n_folded = state.H, state.s, state.n_folded
    lost = start - tab.ns0 - state.win_k.shape[2]   # pairs folded or dropped before this call
    wlo = tab.p0                  # first window position
    i = 0
    while i < L:
        p = start + i
        c = p // C
        seg = min(L - i, (c + 1) * C - p)
        ws = cfg.window_start(c)
        n_ev = max(0, min(p - wlo, ws - wlo))
        if n_ev:
            leave = torch.arange(tab.index(wlo), tab.index(wlo + n_ev), device=k.device)
            cand = torch.cat([sp_idx, leave.view(1, 1, -1).expand(b, hs, -1)], dim=2)
            wlo += n_ev
            n = cand.shape[2]
            keep = cfg.keep(ws, n)
            if keep < n and slots is None:
                slots = Slots(tab, sp_idx, params, H.dtype)
                sp_slot = slots.initial
            new_slot = None if slots is None else slots.add(tab, leave, params)
            cand_slot = None if slots is None else torch.cat([sp_slot, new_slot], dim=2)
            if keep == n:
                sp_idx, sp_slot = cand, cand_slot
            else:
                if keep == 0:
                    idx, out_idx = cand[:, :, :0], torch.arange(n, device=k.device).view(1, 1, n).expand(b, hs, n)
                else:
                    sinks = min(cfg.sinks, ws)
                    ctx = ScoreContext(k=slots.k, v=slots.v, pos=slots.pos, phi_k=slots.phi,
                                       H=H if fold_on else None, s=s if fold_on else None, acc=None, group=g,
                                       eps=cfg.eps, seed=cfg.seed)
                    scores = params.scorer.score(ctx).gather(2, cand_slot)      # slot order -> candidate order
                    if sinks:
                        scores = scores.masked_fill(tab.pos.gather(2, cand) < sinks, float("inf"))
                    idx, out_idx = split_topk(scores, keep)
                out_slot = cand_slot.gather(2, out_idx)
                if fold_on:
                    out_phi = take_rows(slots.phi, expand_heads(out_slot, g))
                    H = H + torch.matmul(out_phi.transpose(-1, -2), expand_heads(take_rows(slots.v, out_slot), g)
                                         .to(H.dtype))
                    s = s + out_phi.sum(dim=2)
                    n_folded += n - keep
                lost += n - keep
                sp_idx, sp_slot = cand.gather(2, idx), cand_slot.gather(2, idx)
                slots.release(out_slot)
        tab.segments.append(Segment(lo=p, hi=p + seg, ws=ws, sp_idx=sp_idx, H=H, s=s, folded=n_folded > 0,
                                    exact=lost == 0))
        i += seg
    _write_state(state, tab, sp_idx, wlo, H, s, n_folded, start + L)
    tab.slots, tab.sp_slot = slots, sp_slot
    return tab


class Slots:
    """The candidates' keys, values, positions and phi(k) (fp32, per query head; None under eviction) in fixed
    slots: a pair leaving the window takes the slot of a pair folded or dropped at an earlier boundary, so a boundary
    writes the few leaving rows instead of copying the whole cache (phi of 512 pairs x 9 heads x 128 features is
    2.4 MB), and the scorer reads the buffers where they lie. Slots are in no particular order: the scores are
    gathered back into candidate (position) order before the selection, so the tie-breaking is the chunk loop's.
    Every scorer on this path scores each candidate on its own (those reading attention mass, SnapKV's pooling
    over neighbours among them, keep the loop)."""

    def __init__(self, tab: Table, sp_idx: torch.Tensor, params: LolaParams, sd: torch.dtype):
        self.k, self.v, self.pos = take_rows(tab.k, sp_idx), take_rows(tab.v, sp_idx), tab.pos.gather(2, sp_idx)
        self.phi = _phi_at(tab, sp_idx, params, sd) if params.cfg.fold else None
        b, hs, ns = sp_idx.shape
        self.initial = torch.arange(ns, device=sp_idx.device).view(1, 1, ns).expand(b, hs, ns)
        self.free = self.initial[:, :, :0]
        self.sd = sd

    def release(self, slot: torch.Tensor) -> None:
        self.free = torch.cat([self.free, slot], dim=2)

    def add(self, tab: Table, leave: torch.Tensor, params: LolaParams) -> torch.Tensor:
        """Write the table entries ``leave`` (n,) into free slots (growing the buffers if needed); their slots."""
        b, hs, cap = self.pos.shape
        n = leave.shape[0]
        short = n - self.free.shape[2]
        if short > 0:
            grow = torch.arange(cap, cap + short, device=leave.device).view(1, 1, short).expand(b, hs, short)
            self.free = torch.cat([self.free, grow], dim=2)
            self.k, self.v, self.pos = _grow(self.k, short), _grow(self.v, short), _grow(self.pos, short)
            self.phi = None if self.phi is None else _grow(self.phi, short)
            cap += short
        slot, self.free = self.free[:, :, :n], self.free[:, :, n:]
        _put(self.k, slot, tab.k[:, :, leave])
        _put(self.v, slot, tab.v[:, :, leave])
        _put(self.pos, slot, tab.pos[:, :, leave])
        if self.phi is not None:
            _put(self.phi, expand_heads(slot, params.group), _phi(tab, leave, params, self.sd))
        return slot


def _grow(x: torch.Tensor, n: int) -> torch.Tensor:
    return torch.cat([x, x.new_zeros(*x.shape[:2], n, *x.shape[3:])], dim=2)


def _put(x: torch.Tensor, slot: torch.Tensor, rows: torch.Tensor) -> None:
    """x[b, h, slot[b, h, j]] = rows[b, h, j] (x (B, H, N, ...) contiguous, slot (B, H, n), rows (B, H, n, ...))."""
    b, h, n_rows = x.shape[:3]
    flat = slot + (torch.arange(b * h, device=slot.device) * n_rows).view(b, h, 1)
    x.view(b * h * n_rows, -1).index_copy_(0, flat.reshape(-1), rows.reshape(flat.numel(), -1).to(x.dtype))


def _phi(tab: Table, idx: torch.Tensor, params: LolaParams, sd: torch.dtype) -> torch.Tensor:
    """phi(k) per query head for the table entries ``idx`` (n,), shared by all heads: (B, Hq, n, F)."""
    return params.feature_map_k(expand_heads(tab.k[:, :, idx], params.group)).to(sd)


def _phi_at(tab: Table, idx: torch.Tensor, params: LolaParams, sd: torch.dtype) -> torch.Tensor:
    """phi(k) per query head for per-head table entries ``idx`` (B, Hs, n): (B, Hq, n, F)."""
    return params.feature_map_k(expand_heads(take_rows(tab.k, idx), params.group)).to(sd)


def _write_state(state: LolaState, tab: Table, sp_idx: torch.Tensor, wlo: int, H, s, n_folded: int,
                 end: int) -> None:
    state.sp_k, state.sp_v, state.sp_pos = take_rows(tab.k, sp_idx), take_rows(tab.v, sp_idx), tab.pos.gather(2, sp_idx)
    w0 = tab.index(wlo)  # copies: a view would keep the whole table (every key of the call) alive
    state.win_k, state.win_v = tab.k[:, :, w0:].clone(), tab.v[:, :, w0:].clone()
    state.win_pos = torch.arange(wlo, end, device=tab.k.device)
    state.H, state.s, state.n_folded, state.pos = H, s, n_folded, end
