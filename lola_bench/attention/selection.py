"""The selection pass of the batched prefill: every chunk boundary of a block of new tokens, in order, no attention.

At each boundary the pairs leaving the window compete with the cached pairs for the sparse cache (scored against the
linear state as it stands), the losers are folded into (H, s) or dropped, exactly as ``common.evict_before`` does.
No query is needed for that as long as the scorer reads no attention mass (``Scorer.needs_attention_mass``), so the
pass runs first and records, per segment of the block, which pairs the segment's queries see exactly (indices into
a table [sparse cache at the start | window at the start | new keys]) and the linear state they read. The queries of
all segments are then answered in batches (``batched``).

The boundaries are sequential (each selection reads the state the previous fold left), so the pass keeps the work per
boundary to a few large tensor ops (on CPU every small op costs about as much as a 64-row copy):
  * the candidates' rows live in fixed slots (``Slots``): a boundary writes the few leaving rows into the slots its
    losers freed, instead of concatenating and re-gathering the whole cache;
  * phi(k) is computed ahead for many leaving rows at once (one feature-map call per ``PHI_BYTES`` of rows);
  * the linear state is carried as ``lin`` = [H | s]^T (B, Hq, d+1, F): SRE reads numerator and denominator with one
    matmul along the contiguous candidate axis, and a fold (H += phi^T v, s += sum phi) is one matmul of the folded
    values, extended by a row of ones, with their phi(k).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .common import LolaParams, split_topk, take_rows, to_storage
from .config import LolaConfig
from .scorers import ScoreContext, expand_heads
from .state import LolaState

PHI_BYTES = 2 * 2**20   # phi(k) rows computed ahead per feature-map call (at least one boundary's worth)


def lin_from(H: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """(H (B, Hq, F, d), s (B, Hq, F)) -> [H | s]^T (B, Hq, d+1, F)."""
    return torch.cat([H.transpose(-1, -2), s.unsqueeze(-2)], dim=-2)


def lin_split(lin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[H | s]^T (B, Hq, d+1, F) -> (H (B, Hq, F, d), s (B, Hq, F)), contiguous."""
    return lin[:, :, :-1].transpose(-1, -2).contiguous(), lin[:, :, -1].contiguous()


@dataclass
class Segment:
    """The queries at positions [lo, hi) (one chunk or part of one) and what they attend to."""
    lo: int
    hi: int
    ws: int                       # window start: the window part is the positions [ws, hi)
    sp_idx: torch.Tensor          # (B, Hs, ns) table indices of the sparse cache (position order until the end)
    lin: torch.Tensor             # (B, Hq, d+1, F) linear state [H | s]^T (``lin_from``)
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


def leaving_rows(tab: Table, start: int, n: int, cfg: LolaConfig) -> int:
    """Table rows [0, this) hold every pair that can leave the window while the ``n`` tokens from ``start`` run."""
    return tab.index(max(tab.p0, cfg.window_start((start + n - 1) // cfg.chunk_size)))


def select_all(k: torch.Tensor, v: torch.Tensor, state: LolaState, params: LolaParams,
               on_segment: Callable[[Table], None] | None = None, table: Table | None = None,
               phi: PhiRows | None = None) -> Table:
    """Run every chunk boundary of the L new tokens (k, v: (B, Hkv, L, d)) on ``state`` and record the segments;
    ``on_segment(table)`` is called after each one is recorded (the pipelined prefill attends while this runs).
    ``table``: ``build_table``'s for these arguments, when the caller made it; ``phi``: where phi(k) of its rows
    comes from (default: a ``PhiRows`` of the table).

    Leaves ``state`` as the chunk loop would after the same tokens (window, sparse cache, H, s, counters)."""
    cfg = params.cfg
    L = k.shape[2]
    tab = table if table is not None else build_table(k, v, state, params)
    b, hs = tab.k.shape[:2]
    start = state.pos
    # until the first scored boundary of the call nothing leaves the table's order: the cache is rows [0, ns)
    ns, sp_idx = tab.ns0, None
    slots = sp_slot = None
    lin, n_folded = lin_from(state.H, state.s), state.n_folded
    lost = start - tab.ns0 - state.win_k.shape[2]   # pairs folded or dropped before this call
    wlo = tab.p0                  # first window position
    if phi is None and cfg.fold:
        phi = PhiRows(tab, params, lin.dtype, leaving_rows(tab, start, L, cfg))
    for p, hi, ws in segment_bounds(start, L, cfg):
        n_ev = max(0, min(p - wlo, ws - wlo))
        if n_ev:
            lo = tab.index(wlo)
            wlo += n_ev
            n = ns + n_ev
            keep = cfg.keep(ws, n)
            if keep == n and slots is None:
                ns = n
            else:
                if slots is None:
                    slots = Slots(tab, ns, params, lin.dtype, phi)
                    sp_slot = slots.initial
                cand_slot = torch.cat([sp_slot, slots.add(tab, lo, n_ev)], dim=2)     # position order
                if keep == n:
                    sp_slot = cand_slot
                else:
                    if keep == 0:
                        keep_i = cand_slot[:, :, :0]
                        out_i = torch.arange(n, device=k.device).view(1, 1, n).expand(b, hs, n)
                    else:   # scores in slot order -> candidate order: ties go to the earlier position
                        keep_i, out_i = split_topk(slots.score(params, lin).gather(2, cand_slot), keep)
                    out_slot = cand_slot.gather(2, out_i)
                    if cfg.fold:
                        lin = slots.fold(lin, out_slot)
                        n_folded += n - keep
                    lost += n - keep
                    sp_slot = cand_slot.gather(2, keep_i)
                    slots.release(out_slot)
                ns = keep
                sp_idx = slots.row.gather(2, sp_slot)
        tab.segments.append(Segment(lo=p, hi=hi, ws=ws, sp_idx=_rows(sp_idx, ns, b, hs, k.device), lin=lin,
                                    folded=n_folded > 0, exact=lost == 0))
        if on_segment is not None:
            on_segment(tab)
    _write_state(state, tab, _rows(sp_idx, ns, b, hs, k.device), wlo, lin, n_folded, start + L)
    tab.slots, tab.sp_slot = slots, sp_slot
    return tab


def segment_bounds(start: int, n: int, cfg: LolaConfig) -> list[tuple[int, int, int]]:
    """(lo, hi, window start) of each segment of the ``n`` tokens from position ``start``: the chunks they touch."""
    C, out, p = cfg.chunk_size, [], start
    while p < start + n:
        c = p // C
        hi = min(start + n, (c + 1) * C)
        out.append((p, hi, cfg.window_start(c)))
        p = hi
    return out


def _rows(sp_idx: torch.Tensor | None, ns: int, b: int, hs: int, device) -> torch.Tensor:
    return sp_idx if sp_idx is not None else torch.arange(ns, device=device).view(1, 1, ns).expand(b, hs, ns)


class PhiRows:
    """phi(k) per query head (fp32) of the table rows [lo, hi), for the rows that leave the window in order: computed
    ahead, one feature-map call per ``PHI_BYTES`` of rows (at least the rows asked for)."""

    def __init__(self, tab: Table, params: LolaParams, sd: torch.dtype, rows_end: int):
        self.k, self.fmap, self.group, self.sd, self.rows_end = tab.k, params.feature_map_k, params.group, sd, rows_end
        self.lo, self.buf = 0, None

    def compute(self, lo: int, hi: int) -> torch.Tensor:
        return self.fmap(expand_heads(self.k[:, :, lo:hi], self.group)).to(self.sd)

    def rows(self, lo: int, hi: int) -> torch.Tensor:
        """(B, Hq, hi - lo, F)."""
        if self.buf is None or lo < self.lo or hi > self.lo + self.buf.shape[2]:
            b, hs = self.k.shape[:2]
            per_row = b * hs * self.group * self.fmap.feature_dim * 4
            self.lo, self.buf = lo, self.compute(lo, max(hi, min(self.rows_end, lo + PHI_BYTES // per_row)))
        return self.buf[:, :, lo - self.lo:hi - self.lo]


class Slots:
    """The candidates' keys, positions, table rows, values (transposed, with a row of ones: (B, Hs, d+1, cap)) and
    phi(k) (fp32, per query head; None under eviction) in fixed slots: a pair leaving the window takes the slot of a
    pair folded or dropped at an earlier boundary, so a boundary writes the few leaving rows instead of copying the
    whole cache (phi of 512 pairs x 9 heads x 128 features is 2.4 MB), and the scorer reads the buffers where they
    lie. Slots are in no particular order: the scores are gathered back into candidate (position) order before the
    selection, so the tie-breaking is the chunk loop's. Every scorer on this path scores each candidate on its own
    (those reading attention mass, SnapKV's pooling over neighbours among them, keep the loop).

    Made at the first scored boundary of a call, when the sparse cache is the table rows [0, ns)."""

    def __init__(self, tab: Table, ns: int, params: LolaParams, sd: torch.dtype, phi: PhiRows | None):
        b, hs, _, d = tab.k.shape
        dev = tab.k.device
        self.group, self.sinks, self.eps, self.seed = params.group, params.cfg.sinks, params.cfg.eps, params.cfg.seed
        self.kv_dtype, self.sd = tab.k.dtype, sd
        cap = ns + params.cfg.chunk_size      # room for the pairs leaving at this boundary (grown if more leave)
        # the slots are written in place: copies of the table, never views; a free slot holds zeros and a position
        # past every other (no sink), so that nothing in it is ever selected or pinned before a pair is written
        self.k, self.pos = tab.k.new_zeros(b, hs, cap, d), tab.pos.new_full((b, hs, cap), torch.iinfo(torch.long).max)
        self.k[:, :, :ns], self.pos[:, :, :ns] = tab.k[:, :, :ns], tab.pos[:, :, :ns]
        slots = torch.arange(cap, device=dev).view(1, 1, cap).expand(b, hs, cap)
        self.initial, self.free = slots[:, :, :ns], slots[:, :, ns:]
        self.row = slots.clone(memory_format=torch.contiguous_format)
        self.v_t = torch.ones(b, hs, d + 1, cap, dtype=sd, device=dev)
        self.v_t[:, :, :d] = 0.0
        self.v_t[:, :, :d, :ns] = tab.v[:, :, :ns].transpose(-1, -2)
        self._phi = phi
        self.phi = None
        if phi is not None:
            self.phi = torch.zeros(b, hs * self.group, cap, phi.fmap.feature_dim, dtype=sd, device=dev)
            self.phi[:, :, :ns] = phi.rows(0, ns)
        self._sink = None
        self._bases()

    def _bases(self) -> None:
        """First flat row of each storage head's (B, Hs, 1) and each query head's (B, Hs, group, 1) slots."""
        b, hs, cap = self.pos.shape
        rows = torch.arange(b * hs * self.group, device=self.pos.device).view(b, hs, self.group, 1) * cap
        self._base_q, self._base_s = rows, rows[:, :, 0] // self.group

    @property
    def v(self) -> torch.Tensor:
        """(B, Hs, cap, d) values in slot order (a view of ``v_t`` in the storage dtype)."""
        return self.v_t[:, :, :-1].transpose(-1, -2).to(self.kv_dtype)

    def release(self, slot: torch.Tensor) -> None:
        self.free = slot if self.free.shape[2] == 0 else torch.cat([self.free, slot], dim=2)

    def add(self, tab: Table, lo: int, n: int) -> torch.Tensor:
        """Write the table rows [lo, lo + n) into free slots (growing the buffers if needed); their slots."""
        b, hs, cap = self.pos.shape
        short = n - self.free.shape[2]
        if short > 0:
            grow = torch.arange(cap, cap + short, device=self.pos.device).view(1, 1, short).expand(b, hs, short)
            self.free = torch.cat([self.free, grow], dim=2)
            self.k, self.row = _grow(self.k, short, 2), _grow(self.row, short, 2)
            self.pos = _grow(self.pos, short, 2, fill=torch.iinfo(torch.long).max)
            self.v_t = _grow(self.v_t, short, 3, fill=1.0)
            self.phi = None if self.phi is None else _grow(self.phi, short, 2)
            self._sink = None
            self._bases()
        slot, self.free = self.free[:, :, :n], self.free[:, :, n:]
        flat = (slot + self._base_s).view(-1)
        hi = lo + n
        d = self.k.shape[-1]
        self.k.view(-1, d).index_copy_(0, flat, tab.k[:, :, lo:hi].reshape(-1, d))
        self.pos.view(-1).index_copy_(0, flat, tab.pos[:, :, lo:hi].reshape(-1))
        self.row.view(-1).index_copy_(0, flat, torch.arange(lo, hi, device=flat.device).repeat(b * hs))
        self.v_t[:, :, :d].scatter_(3, slot.unsqueeze(2).expand(b, hs, d, n),
                                    tab.v[:, :, lo:hi].transpose(-1, -2).to(self.sd))
        if self.phi is not None:
            rows = self._phi.rows(lo, hi)
            self.phi.view(-1, rows.shape[-1]).index_copy_(0, (slot.unsqueeze(2) + self._base_q).view(-1),
                                                           rows.reshape(-1, rows.shape[-1]))
        if self.sinks and lo < self.sinks:
            self._sink = None
        return slot

    def score(self, params: LolaParams, lin: torch.Tensor) -> torch.Tensor:
        """The scorer's scores (B, Hs, cap) of every slot against the linear state ``lin``, +inf for the sinks."""
        fold_on = self.phi is not None
        v_t = self.v_t[:, :, :-1]
        ctx = ScoreContext(k=self.k, v=v_t.transpose(-1, -2), pos=self.pos, phi_k=self.phi,
                           H=lin[:, :, :-1].transpose(-1, -2) if fold_on else None,
                           s=lin[:, :, -1] if fold_on else None, acc=None, group=self.group, eps=self.eps,
                           seed=self.seed, lin_t=lin if fold_on else None, v_t=v_t)
        scores = params.scorer.score(ctx)
        if self.sinks:   # every candidate is older than the window start, so min(sinks, ws) is sinks here
            if self._sink is None:
                self._sink = self.pos < self.sinks
            scores = scores.masked_fill(self._sink, float("inf"))
        return scores

    def fold(self, lin: torch.Tensor, out_slot: torch.Tensor) -> torch.Tensor:
        """``lin`` with the pairs in ``out_slot`` (B, Hs, n) folded in: [H | s]^T += [v | 1]^T phi(k), one matmul."""
        b, hs, n = out_slot.shape
        g, d1, f = self.group, self.v_t.shape[2], self.phi.shape[-1]
        phi = self.phi.view(-1, f).index_select(0, (out_slot.unsqueeze(2) + self._base_q).view(-1))
        v_t = self.v_t.gather(3, out_slot.unsqueeze(2).expand(b, hs, d1, n))              # (B, Hs, d+1, n)
        v_t = v_t.unsqueeze(2).expand(b, hs, g, d1, n).reshape(b * hs * g, d1, n)
        return torch.baddbmm(lin.reshape(b * hs * g, d1, f), v_t, phi.view(b * hs * g, n, f)).view(lin.shape)


def _grow(x: torch.Tensor, n: int, dim: int, fill: float = 0.0) -> torch.Tensor:
    shape = list(x.shape)
    shape[dim] = n
    return torch.cat([x, x.new_full(shape, fill)], dim=dim)


def _write_state(state: LolaState, tab: Table, sp_idx: torch.Tensor, wlo: int, lin: torch.Tensor, n_folded: int,
                 end: int) -> None:
    state.sp_k, state.sp_v, state.sp_pos = take_rows(tab.k, sp_idx), take_rows(tab.v, sp_idx), tab.pos.gather(2, sp_idx)
    w0 = tab.index(wlo)  # copies: a view would keep the whole table (every key of the call) alive
    state.win_k, state.win_v = tab.k[:, :, w0:].clone(), tab.v[:, :, w0:].clone()
    state.win_pos = torch.arange(wlo, end, device=tab.k.device)
    state.H, state.s = lin_split(lin)
    state.n_folded, state.pos = n_folded, end
