"""Batched prefill: the selection pass first (``selection.select_all``), then the queries of many chunks at once.

Each chunk's queries see their window keys (causal), the sparse cache as it stood at the chunk's boundary and the
linear state as it stood then; the selection pass records both per chunk, so the attention of a block of chunks is a
handful of batched tensor ops instead of a Python loop over chunks. While nothing has been folded or dropped yet
(the first ``LolaConfig.exact_len`` tokens of a prompt) LoLA is softmax attention, and those queries run as one fused
causal ``scaled_dot_product_attention``.

Same results as the chunk loop (``chunked.lola_chunked_loop``) up to float rounding, final state included; it serves
every scorer that reads no attention mass (the mass of a chunk's queries feeds the next boundary: those scorers
keep the loop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import LolaParams, combine, ensure_state, take_rows
from .selection import Segment, Table, select_all
from .state import LolaState, state_dtype

BLOCK_ELEMS = 1 << 20   # attention logits per batched step (B * Hs * chunks * group * chunk * keys), 4 MB fp32


def lola_batched(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LolaState,
                 params: LolaParams) -> torch.Tensor:
    """LoLA attention for L new tokens continuing ``state`` (updated in place). Returns (B, Hq, L, d)."""
    if params.scorer.needs_attention_mass:
        raise ValueError(f"scorer {params.scorer.name!r} reads attention mass: use the chunk loop")
    if params.cfg.evict_at == "prompt_end":     # the selection pass and the window slices assume the boundary rule
        raise ValueError("evict_at prompt_end: the first call is prefill_then_compress, later ones the chunk loop")
    ensure_state(state, k, params)
    start = state.pos
    tab = select_all(k, v, state, params)
    out = torch.empty_like(q)
    segs = tab.segments
    i = 0
    if start == 0:  # nothing folded or dropped yet: plain causal softmax over the prefix
        while i < len(segs) and segs[i].exact:
            i += 1
        if i:
            x = segs[i - 1].hi
            out[:, :, :x] = _softmax_prefix(q[:, :, :x], k[:, :, :x], v[:, :, :x])
    cfg = params.cfg
    b, hs = tab.k.shape[:2]
    per_chunk = b * hs * params.group * cfg.chunk_size * (cfg.keep(start + q.shape[2], start + q.shape[2])
                                                           + cfg.window + cfg.chunk_size)
    step = max(1, BLOCK_ELEMS // max(per_chunk, 1))
    while i < len(segs):
        block = segs[i:i + step]
        lo, hi = block[0].lo, block[-1].hi
        out[:, :, lo - start:hi - start] = _attend_block(q[:, :, lo - start:hi - start], tab, block, params)
        i += step
    return out


def _softmax_prefix(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    cd = state_dtype(q.dtype)
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q.to(cd), k.to(cd), v.to(cd), is_causal=True).to(q.dtype)


def _key_index(tab: Table, block: list[Segment], params: LolaParams):
    """Each segment's keys as table indices: the sparse cache (B, Hs, n, ns) padded to the longest with its validity
    (n, ns), or None when no padding; the window positions ws .. ws + W + C (n, W + C) and their positions for the
    causal mask (a huge value where the window is shorter)."""
    cfg = params.cfg
    dev = tab.k.device
    n = len(block)
    sizes = [seg.sp_idx.shape[2] for seg in block]
    ns_max = max(sizes)
    b, hs, size = tab.pos.shape
    if min(sizes) == ns_max:
        sp, sp_valid = torch.stack([seg.sp_idx for seg in block], dim=2), None
    else:
        sp = torch.zeros(b, hs, n, ns_max, dtype=torch.long, device=dev)
        for j, seg in enumerate(block):
            sp[:, :, j, :sizes[j]] = seg.sp_idx
        sp_valid = torch.arange(ns_max, device=dev).view(1, -1) < torch.tensor(sizes, device=dev).view(-1, 1)
    lw = cfg.window + cfg.chunk_size
    ws = torch.tensor([seg.ws for seg in block], device=dev).view(n, 1)
    seg_hi = torch.tensor([seg.hi for seg in block], device=dev).view(n, 1)
    wpos = ws + torch.arange(lw, device=dev).view(1, lw)                          # (n, lw)
    widx = (wpos - tab.p0 + tab.ns0).clamp(0, size - 1)
    w_kpos = torch.where((wpos < seg_hi) & (wpos >= tab.p0), wpos, torch.iinfo(torch.long).max)
    return sp, sp_valid, widx, w_kpos


def _attend_block(q: torch.Tensor, tab: Table, block: list[Segment], params: LolaParams) -> torch.Tensor:
    """Outputs of the queries of consecutive segments ``block`` (q: (B, Hq, hi - lo, d)), as ``common.attend`` gives
    them one segment at a time."""
    cfg = params.cfg
    C, g = cfg.chunk_size, params.group
    b, hq, lq, d = q.shape
    hs = hq // g
    n = len(block)
    cd = state_dtype(q.dtype)
    base = (block[0].lo // C) * C          # position of the first query slot
    off = block[0].lo - base
    qs = q.new_zeros(b, hq, n * C, d, dtype=cd)
    qs[:, :, off:off + lq] = q
    qb = qs.view(b, hs, g, n, C, d).transpose(2, 3).reshape(b, hs, n, g * C, d) * (d ** -0.5)

    sp, sp_valid, widx, w_kpos = _key_index(tab, block, params)
    ns, lw = sp.shape[-1], widx.shape[-1]
    qpos = (base + torch.arange(n * C, device=q.device)).view(n, 1, C).expand(n, g, C).reshape(n, g * C, 1)
    # window part: causal; every query sees at least the key at ws (ws <= its position), so no row is empty
    kw = tab.k.index_select(2, widx.view(-1)).view(b, hs, n, lw, d).to(cd)
    vw = tab.v.index_select(2, widx.view(-1)).view(b, hs, n, lw, d).to(cd)
    lg_w = torch.matmul(qb, kw.transpose(-1, -2)).masked_fill_(w_kpos.view(n, 1, lw) > qpos, float("-inf"))
    sm_max = lg_w.amax(dim=-1, keepdim=True)
    if ns:  # sparse part: every cached pair is older than every query
        ksp = take_rows(tab.k, sp.view(b, hs, n * ns)).view(b, hs, n, ns, d).to(cd)
        vsp = take_rows(tab.v, sp.view(b, hs, n * ns)).view(b, hs, n, ns, d).to(cd)
        lg_s = torch.matmul(qb, ksp.transpose(-1, -2))
        if sp_valid is not None:
            lg_s.masked_fill_(~sp_valid.view(n, 1, ns), float("-inf"))
        sm_max = torch.maximum(sm_max, lg_s.amax(dim=-1, keepdim=True))
    e_w = lg_w.sub_(sm_max).exp_()
    sm_den = e_w.sum(dim=-1)
    sm_num = torch.matmul(e_w, vw)
    if ns:
        e_s = lg_s.sub_(sm_max).exp_()
        sm_den += e_s.sum(dim=-1)
        sm_num += torch.matmul(e_s, vsp)

    def heads(x):  # (B, Hs, n, g*C, ...) -> (B, Hq, n*C, ...)
        rest = x.shape[4:]
        return x.view(b, hs, n, g, C, *rest).transpose(2, 3).reshape(b, hq, n * C, *rest)

    sm_num, sm_den, sm_max = heads(sm_num), heads(sm_den), heads(sm_max.squeeze(-1))
    folded = [seg.folded for seg in block]
    if any(folded):
        ps = qs.new_zeros(b, hq, n * C, params.feature_dim)
        ps[:, :, off:off + lq] = params.feature_map_q(q).to(cd)
        ps = ps.view(b, hq, n, C, -1)
        H = torch.stack([seg.H for seg in block], dim=2)                         # (B, Hq, n, F, d)
        s = torch.stack([seg.s for seg in block], dim=2).unsqueeze(-1)           # (B, Hq, n, F, 1)
        lin_num = torch.matmul(ps, H).view(b, hq, n * C, d)
        lin_den = torch.matmul(ps, s).view(b, hq, n * C)
        y = combine(params, sm_num, sm_den, lin_num, lin_den, sm_max)
        if not all(folded):
            has_lin = torch.tensor(folded, device=q.device).repeat_interleave(C).view(1, 1, n * C, 1)
            y = torch.where(has_lin, y, sm_num / sm_den.unsqueeze(-1))
    else:
        y = sm_num / sm_den.unsqueeze(-1)
    return y[:, :, off:off + lq].to(q.dtype)
