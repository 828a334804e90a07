"""Phase A of the chunked prefill when nothing is scored (sparse = 0): parallel over the chunk steps.

With ``sparse = 0`` every pair that leaves the window is folded into (H, s), except the pinned sinks (the
first ``sinks`` positions, which stay in the sparse cache), so the state after step t is
the initial state plus a prefix sum of per-step contributions:

    H_t = H_0 + sum_{u <= t} sum_{j folded at u} phi(k_j) v_j^T,      s_t likewise with phi(k_j),

and the linear readout of the queries of step t is phi(q)^T H_t, phi(q)^T s_t. Nothing here depends on a
selection, so instead of the merge kernel's sequential walk (one program per storage head, one step after
another) the steps are computed together: per-step contributions as one batched matmul, a cumulative sum
over steps, one batched readout. Steps are processed in blocks of about ``block_tokens`` folded pairs to bound
the memory of the per-step states (B x Hq x steps x F x d floats); each block continues from the previous
block's last state. Plain torch: runs on any device, in float32 like the torch path's fold (``common.fold``).
"""

from __future__ import annotations

import functools

import torch

from ..common import LolaParams
from ..scorers import expand_heads
from ..state import LolaState

BLOCK_TOKENS = 8192                 # folded pairs / queries per block of steps
STATE_BYTES = 256 * 1024 * 1024     # and at most this much for one block's per-step states (B x Hq x F x d fp32 each)


def _padded(starts: list[int], counts: list[int], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(steps, width) indices starts[t] + i (clamped to a valid one where i >= counts[t]) and the validity mask."""
    i = torch.arange(width).view(1, -1)
    st = torch.tensor(starts).view(-1, 1)
    n = torch.tensor(counts).view(-1, 1)
    valid = i < n
    return torch.where(valid, st + i, st.clamp(min=0)), valid


@functools.lru_cache(maxsize=64)
def _plan(rows: tuple, steps: int, width_ev: int, width_q: int, with_q: bool, device: str) -> tuple:
    """Index tensors of every block of steps, built on the host once per schedule and device (the layers of a
    prefill share it), so that the fold itself never copies from the host or waits for the device."""
    blocks = []
    for t0 in range(0, len(rows), steps):
        blk = rows[t0:t0 + steps]
        idx, valid = _padded([r[1] + r[3] - r[0] for r in blk], [r[2] - (r[3] - r[0]) for r in blk], width_ev)
        q_part = None
        lin = [i for i, r in enumerate(blk) if r[8]]
        if with_q and lin:
            qi, qvalid = _padded([blk[i][4] for i in lin], [blk[i][5] for i in lin], width_q)
            src = qvalid.view(-1).nonzero().view(-1)              # valid slots of the padded query layout
            q_part = tuple(x.to(device) for x in (torch.tensor(lin), qi.view(-1), src, qi.view(-1)[src]))
        blocks.append((len(blk), idx.view(-1).to(device), valid.to(device), q_part))
    return tuple(blocks)


def fold_and_readout(params: LolaParams, state: LolaState, ku: torch.Tensor, vu: torch.Tensor, rows: tuple,
                     q: torch.Tensor | None, ln: torch.Tensor | None, ld: torch.Tensor | None,
                     block_tokens: int | None = None) -> None:
    """What the merge kernel does for a schedule without scoring (sparse = 0): the pairs a step keeps are the
    pinned sinks, i.e. its cache so far plus the oldest ``keep - ns`` of its leaving pairs (positions increase with
    the unified index). Fold each step's other leaving pairs (unified indices [leave_lo + keep - ns,
    leave_lo + n_leave) of ``ku``/``vu``) into state.H / state.s in place, and, with ``q``, write each step's
    linear readout of its queries into ``ln`` (B, Hq, L, d) and ``ld`` (B, Hq, L)."""
    if any(not 0 <= r[3] - r[0] <= r[2] for r in rows):
        raise ValueError("fold_and_readout needs a schedule whose steps keep their cache and a prefix of the "
                         "leaving pairs (sparse = 0, sinks only)")
    b, hq = state.H.shape[:2]
    d = ku.shape[-1]
    g = params.group
    sd = state.H.dtype
    dev = ku.device
    width_ev = max(max(r[2] for r in rows), 1)
    width_q = max(max(r[5] for r in rows), 1)
    per_step = max(width_ev, width_q if q is not None else 0)
    per_state = b * hq * state.H.shape[2] * d * state.H.element_size()
    steps = max(1, min((block_tokens or BLOCK_TOKENS) // per_step, STATE_BYTES // per_state))
    H, s = state.H, state.s
    for nb, flat, valid, q_part in _plan(rows, steps, width_ev, width_q, q is not None, str(dev)):
        kx = ku.index_select(2, flat)                                      # (B, Hs, nb * W, d)
        vx = vu.index_select(2, flat)
        phi = params.feature_map_k(expand_heads(kx, g)).to(sd)             # (B, Hq, nb * W, F)
        phi = phi.view(b, hq, nb, width_ev, -1) * valid.view(1, 1, nb, width_ev, 1)
        vv = expand_heads(vx, g).to(sd).view(b, hq, nb, width_ev, d)
        Ht = torch.matmul(phi.transpose(-1, -2), vv)                       # (B, Hq, nb, F, d) per-step folds
        st = phi.sum(dim=3)                                                # (B, Hq, nb, F)
        del phi, vv, kx, vx
        Ht.cumsum_(dim=2).add_(H.unsqueeze(2))                             # -> state after each step's fold
        st.cumsum_(dim=2).add_(s.unsqueeze(2))
        H, s = Ht[:, :, -1].clone(), st[:, :, -1].clone()                  # carried on; the block can be freed
        if q_part is None:
            continue
        sel, qflat, src, dst = q_part
        n = sel.shape[0]
        phq = params.feature_map_q(q.index_select(2, qflat)).to(sd).view(b, hq, n, width_q, -1)
        full = n == nb  # every step of the block reads its state out: no gather copy
        num = torch.matmul(phq, Ht if full else Ht.index_select(2, sel))  # (B, Hq, n, Wq, d)
        den = torch.matmul(phq, (st if full else st.index_select(2, sel)).unsqueeze(-1)).squeeze(-1)
        ln.index_copy_(2, dst, num.reshape(b, hq, -1, d).index_select(2, src))
        ld.index_copy_(2, dst, den.reshape(b, hq, -1).index_select(2, src))
    state.H.copy_(H)
    state.s.copy_(s)
