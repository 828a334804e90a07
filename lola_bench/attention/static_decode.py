"""Static-capacity LoLA decode: a decode step of fixed shapes reading its position and lengths from device tensors,
so that it can be captured in a CUDA graph and replayed (issue #16 item 3).

``StaticLolaState`` holds one layer's state in buffers allocated once:
  k, v       (B, Hs, cap_s + cap_w, d)  slots [0, cap_s): the sparse cache (``sp_n`` valid, in position order),
                                         slots [cap_s, cap_s + cap_w): the window, slot cap_s + j = position
                                         ``win_start + j`` (valid up to ``pos - 1``)
  sp_pos     (B, Hs, cap_s)             positions of the sparse slots
  H, s                                   the linear state, as in LolaState
  pos, win_start, sp_n  (1,) int64       device-side position and lengths (views of one buffer ``counts``, whose
                                         address the Triton decode takes); ``has_lin`` (1,) bool: anything folded
with cap_s = sparse + sinks (the most ``LolaConfig.keep`` ever keeps) and cap_w = window + chunk (the most a window
holds: from ``window_start`` of the token's chunk up to the token), both capped by ``max_len``. The host keeps
mirrors (``pos_host``, ``win_start_host``, ``sp_n_host``, ``n_folded``) that it advances itself, one per step, so
it never reads the device.

``static_step`` (device work only, the part a CUDA graph replays): write the new pair into its window slot
(``append_pair``), attend (``static_attention``: over every slot with a mask built on the device from the counts, add
the linear readout, combine exactly like ``common.attend`` / ``common.combine``; the readout is always computed and
selected by ``has_lin``, where ``attend`` branches on ``n_folded``), advance ``pos``. It never branches on tensor
values. Slots outside the mask hold finite stale pairs (zeros at first); they get weight exp(-inf) = 0. The Triton
version (``kernels.static_step_triton``) is this step with the attention in the split-K decode kernels, which read
the counts from ``counts`` and ``has_lin`` on the device (a fixed grid from the capacities).

``StaticLolaState.prepare`` (host, eager, before each step): when the token starts a chunk whose window start moved
(every ``chunk`` tokens), the chunk-boundary merge runs on a ``LolaState`` copy (``common.evict_before``, or any
function of its signature, e.g. the Triton merge) and is loaded back into the same buffers. ``static_decode`` =
prepare + step + host advance: the same outputs and state as ``decode.lola_decode``.

Not static (``static_unsupported`` says which, ``from_state`` refuses): ``evict_at = prompt_end`` (after the
prompt's compression the window grows by one pair per token: no fixed capacity) and the scorers that need the
attention mass of every query (attention, snapkv: the step does not accumulate it).
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

import torch

from ..errors import UserError
from .common import LolaParams, combine, evict_before, to_storage
from .state import LolaState, state_dtype
from .static_merge import advance_host_merge, static_merge, steady_reason

Evict = Callable[[LolaState, LolaParams, int], None]


def static_unsupported(params: LolaParams) -> str | None:
    """Why this configuration has no static decode (None when it has one)."""
    cfg = params.cfg
    if cfg.evict_at == "prompt_end":
        return "evict_at=prompt_end: after the prompt's compression the window grows by one pair per token"
    if params.scorer.needs_attention_mass:
        return f"scorer {cfg.scorer!r} needs the attention mass of every query, which the static step does not track"
    return None


def capacities(params: LolaParams, max_len: int | None = None) -> tuple[int, int]:
    """(sparse slots, window slots): sparse + sinks and window + chunk, each at most ``max_len`` when given."""
    cfg = params.cfg
    cap_s, cap_w = cfg.sparse + cfg.sinks, cfg.window + cfg.chunk_size
    if max_len is not None:
        cap_s, cap_w = min(cap_s, max_len), min(cap_w, max_len)
    return cap_s, cap_w


class StaticLolaState:
    """One layer's decode state in fixed buffers (module docstring). Build it with ``from_state``."""

    def __init__(self, params: LolaParams, batch: int, dtype: torch.dtype, device, max_len: int | None = None):
        reason = static_unsupported(params)
        if reason:
            raise UserError(f"no static LoLA decode for this configuration: {reason}")
        self.params, self.max_len = params, max_len
        self.cap_s, self.cap_w = capacities(params, max_len)
        hs, hq, d = params.storage_heads, params.num_heads, params.head_dim
        f = params.feature_dim if params.cfg.fold else 0
        n, sd, i64 = self.cap_s + self.cap_w, state_dtype(dtype), dict(dtype=torch.long, device=device)
        self.k = torch.zeros(batch, hs, n, d, dtype=dtype, device=device)
        self.v = torch.zeros(batch, hs, n, d, dtype=dtype, device=device)
        self.sp_pos = torch.zeros(batch, hs, self.cap_s, **i64)
        self.H = torch.zeros(batch, hq, f, d, dtype=sd, device=device)
        self.s = torch.zeros(batch, hq, f, dtype=sd, device=device)
        self.counts = torch.zeros(3, **i64)                                           # one buffer: the kernels
        self.pos, self.win_start, self.sp_n = self.counts[0:1], self.counts[1:2], self.counts[2:3]  # take its address
        self.has_lin = torch.zeros(1, dtype=torch.bool, device=device)
        self.slots = torch.arange(n, **i64)
        self.pos_host = self.win_start_host = self.sp_n_host = self.n_folded = 0
        self.merges: Counter = Counter()         # chunk-boundary merges by how they ran: copy, static, graph

    # -- conversion (eager, exact) ------------------------------------------------------------------------------
    @classmethod
    def from_state(cls, state: LolaState, params: LolaParams, max_len: int | None = None) -> StaticLolaState:
        """The static copy of a prefilled ``state`` (one host read: that its window is the contiguous run of
        positions ending at ``pos - 1``, as every path leaves it)."""
        if not state.initialized or state.pos == 0:
            raise UserError("a static LoLA decode state starts from a prefilled state (pos > 0)")
        nw = state.win_k.shape[2]
        if state.win_pos.tolist() != list(range(state.pos - nw, state.pos)):
            raise UserError("the window is not the contiguous run of positions ending at the last token")
        st = cls(params, state.win_k.shape[0], state.win_k.dtype, state.win_k.device, max_len)
        st.load(state)
        return st

    def load(self, state: LolaState) -> None:
        """Copy ``state`` into the buffers (in place: a captured step keeps reading the same memory) and set the
        counts. Host arithmetic only: the window of ``state`` ends at ``state.pos - 1``."""
        if state.win_acc is not None or state.sp_acc is not None:
            raise UserError("a state tracking attention mass has no static decode")
        ns, nw = state.sp_k.shape[2], state.win_k.shape[2]
        if ns > self.cap_s or nw > self.cap_w:
            raise UserError(f"state holds {ns} sparse / {nw} window pairs, capacity is {self.cap_s} / {self.cap_w}")
        cs = self.cap_s
        for buf, sp, win in ((self.k, state.sp_k, state.win_k), (self.v, state.sp_v, state.win_v)):
            buf[:, :, :ns].copy_(sp)
            buf[:, :, cs:cs + nw].copy_(win)
        self.sp_pos[:, :, :ns].copy_(state.sp_pos)
        self.H.copy_(state.H)
        self.s.copy_(state.s)
        self.pos_host, self.win_start_host, self.sp_n_host, self.n_folded = state.pos, state.pos - nw, ns, \
            state.n_folded
        self.pos.fill_(self.pos_host)
        self.win_start.fill_(self.win_start_host)
        self.sp_n.fill_(ns)
        self.has_lin.fill_(state.n_folded > 0)

    def to_state(self) -> LolaState:
        """A LolaState (fresh contiguous tensors) equal to this state, from the host mirrors."""
        ns, nw, cs = self.sp_n_host, self.pos_host - self.win_start_host, self.cap_s
        st = LolaState(pos=self.pos_host, n_folded=self.n_folded)
        st.sp_k, st.sp_v = self.k[:, :, :ns].clone(), self.v[:, :, :ns].clone()
        st.sp_pos = self.sp_pos[:, :, :ns].clone()
        st.win_k, st.win_v = self.k[:, :, cs:cs + nw].clone(), self.v[:, :, cs:cs + nw].clone()
        st.win_pos = torch.arange(self.win_start_host, self.pos_host, device=self.k.device)
        st.H, st.s = self.H.clone(), self.s.clone()
        return st

    # -- host side of a step (eager) ----------------------------------------------------------------------------
    def boundary(self) -> int | None:
        """The new window start when the next token (position ``pos_host``) starts a chunk whose window start moved
        (pairs must leave the window first), else None."""
        cfg = self.params.cfg
        ws = cfg.window_start(self.pos_host // cfg.chunk_size)
        return ws if ws > self.win_start_host else None

    def prepare(self, evict: Evict = evict_before, steady: bool = False) -> bool:
        """Before a step: run the chunk-boundary merge when the next token needs it (True if it ran), and check that
        the step's slot exists. ``evict``: ``common.evict_before`` or a function of its signature, on a
        ``LolaState`` copy; ``steady``: a boundary of the steady shape (``static_merge.steady_reason``) merges in
        place instead (``static_merge``). ``merges`` counts which ran."""
        ws = self.boundary()
        if ws is not None:
            if steady and steady_reason(self, ws) is None:
                static_merge(self)
                advance_host_merge(self)
                self.merges["static"] += 1
            else:
                st = self.to_state()
                evict(st, self.params, ws)
                self.load(st)
                self.merges["copy"] += 1
        self.check_capacity()
        return ws is not None

    def check_capacity(self) -> None:
        """The next step's window slot exists (else a one-line error: the state was built for a shorter run)."""
        if self.pos_host - self.win_start_host >= self.cap_w:
            raise UserError(f"position {self.pos_host} is past the static state's capacity (max_len {self.max_len})")

    def advance_host(self, n: int = 1) -> None:
        """Count ``n`` steps that ran on the device (``static_step`` advances ``pos`` there)."""
        self.pos_host += n

    def nbytes(self) -> int:
        """Bytes a step reads from this state: every slot of K and V (masked or not), H and s, the positions."""
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.H, self.s, self.sp_pos))


def append_pair(k: torch.Tensor, v: torch.Tensor, st: StaticLolaState) -> None:
    """Write the new pair (B, Hkv, 1, d) into its window slot ``cap_s + pos - win_start`` (a device-side index)."""
    slot = st.pos - st.win_start + st.cap_s
    st.k.index_copy_(2, slot, to_storage(k, st.params).to(st.k.dtype))
    st.v.index_copy_(2, slot, to_storage(v, st.params).to(st.v.dtype))


def static_attention(q: torch.Tensor, st: StaticLolaState) -> torch.Tensor:
    """The attention of one query (B, Hq, 1, d) over the valid slots (the new pair already written, ``pos`` not yet
    advanced) plus the linear readout, in torch ops, in the state dtype: masks from the device counts."""
    p = st.params
    b, hq, _, d = q.shape
    g, hs, cs = p.group, p.storage_heads, st.cap_s
    cd = state_dtype(q.dtype)
    slot = st.pos - st.win_start + cs                                              # (1,) the new pair's slot
    valid = (st.slots < st.sp_n) | ((st.slots >= cs) & (st.slots <= slot))       # sparse slots | window up to it
    keys, vals = st.k.to(cd), st.v.to(cd)
    qg = q.to(cd).reshape(b, hs, g, d)                                             # as common.attend
    logits = torch.matmul(qg, keys.transpose(-1, -2)) * (d ** -0.5)
    logits = logits.masked_fill(~valid, float("-inf"))
    sm_max = logits.amax(dim=-1, keepdim=True)
    e = torch.exp(logits - sm_max)
    sm_den = e.sum(dim=-1).reshape(b, hq, 1)
    sm_num = torch.matmul(e, vals).reshape(b, hq, 1, d)
    sm_max = sm_max.reshape(b, hq, 1)
    out = sm_num / sm_den.unsqueeze(-1)
    if p.cfg.fold:
        phi_q = p.feature_map_q(q).to(cd)
        lin_num = torch.matmul(phi_q, st.H)
        lin_den = torch.einsum("bhlf,bhf->bhl", phi_q, st.s)
        out = torch.where(st.has_lin, combine(p, sm_num, sm_den, lin_num, lin_den, sm_max), out)
    return out


Attention = Callable[[torch.Tensor, StaticLolaState], torch.Tensor]


def static_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, st: StaticLolaState,
                attention: Attention = static_attention) -> torch.Tensor:
    """One decode token, device work only (capturable): q (B, Hq, 1, d), k, v (B, Hkv, 1, d) -> (B, Hq, 1, d).
    Reads no host mirror and branches only on the configuration. ``attention``: ``static_attention`` (torch) or the
    Triton kernels' ``kernels.decode.static_decode_attention`` (``kernels.static_step_triton``)."""
    if q.shape[2] != 1:
        raise ValueError(f"static_step takes one token at a time, got {q.shape[2]}")
    append_pair(k, v, st)
    out = attention(q, st)
    st.pos.add_(1)
    return out.to(q.dtype)


def static_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, st: StaticLolaState,
                  evict: Evict = evict_before, step=static_step, steady: bool = False) -> torch.Tensor:
    """``decode.lola_decode`` on a static state, eagerly: ``prepare`` (the merge at a chunk boundary; ``steady``:
    in place where it can, ``static_merge``), the step (``static_step`` or ``kernels.static_step_triton``), the host
    advance."""
    st.prepare(evict, steady)
    out = step(q, k, v, st)
    st.advance_host()
    return out
