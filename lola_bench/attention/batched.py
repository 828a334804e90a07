"""Batched prefill: the selection pass first (``selection.select_all``), then the queries of many chunks at once.

Each chunk's queries see their window keys (causal), the sparse cache as it stood at the chunk's boundary and the
linear state as it stood then; the selection pass records both per chunk, so the attention of a block of chunks is a
handful of batched tensor ops instead of a Python loop over chunks. While nothing has been folded or dropped yet
(the first ``LolaConfig.exact_len`` tokens of a prompt) LoLA is softmax attention, and those queries run as one fused
causal ``scaled_dot_product_attention``.

On CPU with two or more torch threads the work runs as a two-thread pipeline (``pipeline``): the selection pass is
a sequence of small dependent steps that a second core barely speeds up, so one thread runs it while the other
answers the exact prefix and every block of chunks whose boundaries are done, each with one intra-op thread.

Same results as the chunk loop (``chunked.lola_chunked_loop``) up to float rounding, final state included; it serves
every scorer that reads no attention mass (the mass of a chunk's queries feeds the next boundary: those scorers
keep the loop).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from .common import LolaParams, combine, ensure_state, take_rows
from .selection import Segment, Table, select_all
from .state import LolaState, state_dtype

BLOCK_ELEMS = 1 << 20   # attention logits per batched step (B * Hs * chunks * group * chunk * keys), 4 MB fp32
# PyTorch's CPU flash attention, which also returns the log-sum-exp (None where this torch lacks it)
_FLASH_CPU = getattr(getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None), "default", None)


def use_fused(q: torch.Tensor, params: LolaParams) -> bool:
    """Whether ``attend_block`` runs the softmax part as one fused flash-attention call (same outputs as the explicit
    logits up to rounding): on CPU, in float32 / float64, for the formulas that depend on the softmax sums only
    through their shift (``common.mix``: calibrated, lola). Faster on the embedded model's layer with one thread and
    with two (results/speed/cpu-prefill-layer/fused-*.json). ``LOLA_CPU_FUSED=0`` turns it off."""
    return (os.environ.get("LOLA_CPU_FUSED", "").strip().lower() not in ("0", "false", "no", "off")
            and _FLASH_CPU is not None and q.device.type == "cpu" and q.dtype in (torch.float32, torch.float64)
            and params.cfg.combine in ("calibrated", "lola"))


def lola_batched(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LolaState,
                 params: LolaParams) -> torch.Tensor:
    """LoLA attention for L new tokens continuing ``state`` (updated in place). Returns (B, Hq, L, d)."""
    if params.scorer.needs_attention_mass:
        raise ValueError(f"scorer {params.scorer.name!r} reads attention mass: use the chunk loop")
    if params.cfg.evict_at == "prompt_end":     # the selection pass and the window slices assume the boundary rule
        raise ValueError("evict_at prompt_end: the first call is prefill_then_compress, later ones the chunk loop")
    ensure_state(state, k, params)
    from .pipeline import lola_pipelined, use_pipeline

    if use_pipeline(q, state, params):
        return lola_pipelined(q, k, v, state, params)
    start = state.pos
    x = exact_prefix(start, q.shape[2], params)
    tab = select_all(k, v, state, params)
    out = torch.empty_like(q)
    if x:
        out[:, :, :x] = softmax_prefix(q[:, :, :x], k[:, :, :x], v[:, :, :x])
    segs = attended_segments(tab, start + x)
    if not segs:
        return out
    win = Window(segs, tab.p0, tab.ns0, tab.pos.shape[2], params, q.device)
    step = chunks_per_block(q, tab.pos.shape[2], params)
    work: dict = {}   # buffers reused from block to block
    for j in range(0, len(segs), step):
        block = segs[j:j + step]
        lo, hi = block[0].lo - start, block[-1].hi - start
        out[:, :, lo:hi] = attend_block(q[:, :, lo:hi], tab, block, params, work, win.part(j, len(block)))
    return out


def exact_prefix(start: int, n: int, params: LolaParams) -> int:
    """How many of the ``n`` new tokens from position ``start`` are plain causal softmax attention: from position 0,
    those before the first boundary that folds or drops a pair (``LolaConfig.exact_len``), else none."""
    return min(n, params.cfg.exact_len) if start == 0 else 0


def attended_segments(tab: Table, lo: int) -> list[Segment]:
    """The segments from position ``lo`` on (the queries the exact prefix does not answer); every earlier one must be
    exact (nothing folded or dropped before it)."""
    if any(not seg.exact for seg in tab.segments if seg.lo < lo):
        raise AssertionError("the exact prefix runs past the first boundary that folds or drops a pair")
    return [seg for seg in tab.segments if seg.lo >= lo]


def chunks_per_block(q: torch.Tensor, n_rows: int, params: LolaParams, elems: int | None = None) -> int:
    """Chunks per attention step, so that one step's logits stay near ``elems`` (default ``BLOCK_ELEMS``;
    ``n_rows``: table rows)."""
    cfg = params.cfg
    keys = cfg.keep(n_rows, n_rows) + cfg.window + cfg.chunk_size
    per_chunk = q.shape[0] * q.shape[1] * cfg.chunk_size * keys
    return max(1, (BLOCK_ELEMS if elems is None else elems) // max(per_chunk, 1))


def softmax_prefix(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    cd = state_dtype(q.dtype)
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return F.scaled_dot_product_attention(q.to(cd), k.to(cd), v.to(cd), is_causal=True).to(q.dtype)


class Window:
    """The window part of the keys of consecutive segments, for all of them at once: table indices of the positions
    ws .. ws + W + C (n, lw) and the mask (n, C, lw), True where a key is later than the query slot, past the segment
    or before the table. ``segments``: anything with lo, hi, ws (``Segment``s, or ``segment_bounds`` tuples)."""

    def __init__(self, segments, p0: int, ns0: int, n_rows: int, params: LolaParams, device):
        cfg = params.cfg
        C, lw = cfg.chunk_size, cfg.window + cfg.chunk_size
        bounds = [(s.lo, s.hi, s.ws) if isinstance(s, Segment) else s for s in segments]
        n = len(bounds)
        meta = torch.tensor([[ws, hi, (lo // C) * C] for lo, hi, ws in bounds], device=device).view(n, 3)
        wpos = meta[:, :1] + torch.arange(lw, device=device).view(1, lw)                   # (n, lw)
        self.idx = (wpos - p0 + ns0).clamp(0, n_rows - 1)
        kpos = torch.where((wpos < meta[:, 1:2]) & (wpos >= p0), wpos, torch.iinfo(torch.long).max)
        qpos = meta[:, 2:].view(n, 1, 1) + torch.arange(C, device=device).view(1, C, 1)    # (n, C, 1)
        # every query sees at least the key at ws (ws <= its position), so no row is left empty
        self.mask = kpos.view(n, 1, lw) > qpos
        # keys up to the chunk start are older than every query slot: only the columns from the first later one
        # (or all, where the window reaches before the table) can be masked
        self.col0 = min((lo // C) * C - ws + 1 if ws >= p0 else 0 for lo, _, ws in bounds)

    def part(self, j: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Table indices (n, lw) and mask (n, C, lw - col0) of the columns from ``col0`` on, of segments j .. j+n."""
        return self.idx[j:j + n], self.mask[j:j + n, :, self.col0:]


def _key_index(tab: Table, block: list[Segment], widx: torch.Tensor):
    """The keys of each segment as table indices [sparse cache, padded to the longest | window] (B, Hs, n, ns + lw),
    ns, and the validity of the padded sparse part (n, ns), None when no segment is padded."""
    n, lw = widx.shape
    sizes = [seg.sp_idx.shape[2] for seg in block]
    ns = max(sizes)
    b, hs = tab.pos.shape[:2]
    if min(sizes) == ns:
        sp, sp_valid = torch.stack([seg.sp_idx for seg in block], dim=2), None
    else:
        dev = tab.k.device
        sp = torch.zeros(b, hs, n, ns, dtype=torch.long, device=dev)
        for j, seg in enumerate(block):
            sp[:, :, j, :sizes[j]] = seg.sp_idx
        sp_valid = torch.arange(ns, device=dev).view(1, -1) < torch.tensor(sizes, device=dev).view(-1, 1)
    return torch.cat([sp, widx.view(1, 1, n, lw).expand(b, hs, n, lw)], dim=-1), ns, sp_valid


def _buffer(work: dict, name: str, shape: tuple, dtype: torch.dtype, device) -> torch.Tensor:
    """A tensor of ``shape`` on a buffer kept in ``work`` (grown when too small): no fresh pages per block."""
    numel = 1
    for x in shape:
        numel *= x
    buf = work.get(name)
    if buf is None or buf.numel() < numel or buf.dtype != dtype:
        buf = work[name] = torch.empty(numel, dtype=dtype, device=device)
    return buf[:numel].view(shape)


def attend_block(q: torch.Tensor, tab: Table, block: list[Segment], params: LolaParams, work: dict,
                 window: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Outputs of the queries of the consecutive segments ``block`` (q: (B, Hq, hi - lo, d)), as ``common.attend``
    gives them one segment at a time: one gather of each segment's keys and values, one matmul for the logits of all
    segments, one softmax, one matmul with the values, one for the linear part. ``work``: reusable buffers;
    ``window``: the block's part of its ``Window``."""
    cfg = params.cfg
    C, g = cfg.chunk_size, params.group
    b, hq, lq, d = q.shape
    hs, n = hq // g, len(block)
    cd, dev = state_dtype(q.dtype), q.device
    off = block[0].lo % C                  # the first query's slot in its chunk
    if off == 0 and lq == n * C:
        qs = q.to(cd)
    else:
        qs = q.new_zeros(b, hq, n * C, d, dtype=cd)
        qs[:, :, off:off + lq] = q
    qb = qs.reshape(b, hs, g, n, C, d).transpose(2, 3).reshape(b * hs * n, g * C, d)
    widx, window_mask = window
    idx, ns, sp_valid = _key_index(tab, block, widx)
    kk = idx.shape[-1]
    idx = idx.view(b, hs, n * kk)
    keys = take_rows(tab.k, idx, out=_buffer(work, "k", (b * hs * n * kk, d), tab.k.dtype, dev))
    vals = take_rows(tab.v, idx, out=_buffer(work, "v", (b * hs * n * kk, d), tab.v.dtype, dev))
    keys, vals = keys.view(b * hs * n, kk, d).to(cd), vals.view(b * hs * n, kk, d).to(cd)
    folded = [seg.folded for seg in block]

    def heads(x):  # (B*Hs*n, g*C, ...) -> (B, Hq, n*C, ...)
        rest = x.shape[2:]
        return x.view(b, hs, n, g, C, *rest).transpose(2, 3).reshape(b, hq, n * C, *rest)

    if use_fused(q, params):
        # one fused CPU flash-attention call: normalized outputs and the log-sum-exp, no logits in memory
        mask = _buffer(work, "mask", (n, g, C, kk), cd, dev).zero_()
        mask[..., kk - window_mask.shape[-1]:].masked_fill_(window_mask.unsqueeze(1), float("-inf"))
        if sp_valid is not None:
            mask[..., :ns].masked_fill_(~sp_valid.view(n, 1, 1, ns), float("-inf"))
        y, lse = _FLASH_CPU(qb.view(b * hs, n, g * C, d), keys.view(b * hs, n, kk, d), vals.view(b * hs, n, kk, d),
                            attn_mask=mask.view(1, n, g * C, kk), scale=d ** -0.5)
        y = heads(y.reshape(b * hs * n, g * C, d))
        if any(folded):   # shifted by the log-sum-exp: the softmax sum is 1 ('calibrated' / 'lola' allow any shift)
            sm_num, sm_den, sm_max = y, y.new_ones(y.shape[:-1]), heads(lse.reshape(b * hs * n, g * C))
    else:
        lg = _buffer(work, "lg", (b * hs * n, g * C, kk), cd, dev)
        torch.baddbmm(lg, qb, keys.transpose(1, 2), beta=0.0, alpha=d ** -0.5, out=lg)
        lg6 = lg.view(b, hs, n, g, C, kk)
        lg6[..., kk - window_mask.shape[-1]:].masked_fill_(window_mask.unsqueeze(1), float("-inf"))
        if sp_valid is not None:   # sparse part: every cached pair is older than every query; padding masked
            lg6[..., :ns].masked_fill_(~sp_valid.view(n, 1, 1, ns), float("-inf"))
        if any(folded):
            sm_max = lg.amax(dim=-1)
        p = torch.softmax(lg, dim=-1, out=_buffer(work, "p", lg.shape, cd, dev))
        y = heads(torch.bmm(p, vals))                                            # softmax outputs (B, Hq, n*C, d)
        if any(folded):
            # the exp sums shifted by the max logit, as ``common.attend`` has them: the largest probability is 1/sum
            sm_den = heads(p.amax(dim=-1).reciprocal_())
            sm_num, sm_max = y * sm_den.unsqueeze(-1), heads(sm_max)
    if any(folded):
        ps = params.feature_map_q(q).to(cd)
        if ps.shape[2] != n * C:
            ps = torch.cat([ps.new_zeros(b, hq, off, ps.shape[-1]), ps,
                            ps.new_zeros(b, hq, n * C - off - lq, ps.shape[-1])], dim=2)
        lin = torch.stack([seg.lin for seg in block], dim=2)                    # (B, Hq, n, d+1, F)
        lin = torch.matmul(ps.view(b, hq, n, C, -1), lin.transpose(-1, -2)).view(b, hq, n * C, d + 1)
        mixed = combine(params, sm_num, sm_den, lin[..., :d], lin[..., d], sm_max)
        if not all(folded):
            has_lin = torch.tensor(folded, device=dev).repeat_interleave(C).view(1, 1, n * C, 1)
            mixed = torch.where(has_lin, mixed, y)
        y = mixed
    return y[:, :, off:off + lq].to(q.dtype)
