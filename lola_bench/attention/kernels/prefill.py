"""Chunked prefill in two launches per layer, whatever the prompt length.

The torch path (``chunked.lola_chunked``) loops over chunks in Python (evict/merge, append, attend per
chunk), which is launch-bound on a GPU. Here the same computation is split by dependency:

  schedule (host, no device sync)  every chunk-aligned segment of the new tokens becomes one row: how many
                                   pairs leave the window, how many stay in the sparse cache, the window
                                   range, whether anything is folded yet. It only depends on sizes, so it
                                   is computed once per (state sizes, L, config) and cached across layers.
  phase A: merge kernel (merge.py)  one program per (batch, storage head) walks the rows in order: score,
                                   select, fold, and read the linear part out for the segment's queries
                                   (phi(q)^T H, phi(q)^T s). Writes each step's sparse index list.
                                   ``$LOLA_MERGE=stepwise`` runs the same steps as a few wide launches each
                                   (merge_steps.py, CUDA graph on a GPU) instead.
  phase B: attention kernel        one program per (segment, query block, batch * query head), all in
                                   parallel: online softmax over the step's sparse list (gathered by index)
                                   and the causal window, then the combine (``common.mix``) with phase A's
                                   linear readout (exact softmax while nothing is folded).

Keys and values are addressed in one "unified" per-storage-head buffer [old sparse | old window | new
tokens] (just the new K/V when the state is empty and GQA is grouped: no copy), whose index order is the
position order. What remains in Python per layer: building that buffer, the schedule lookup, a few
allocations, and gathering the final sparse cache / window into the LolaState (a handful of torch ops,
independent of the number of chunks).

With sparse = 0 nothing is scored (only pinned sinks stay), so phase A is not sequential at all:
``linear_prefix.fold_and_readout`` computes every step's fold as one batched matmul, a cumulative sum over steps
and one batched readout.

Measured (results/perf/nvidia-h200.md, one layer of llama-3.2-1b, bf16, H200): phase B is a block-sparse flash
attention (each query sees at most lambda + window + chunk keys), parallel over everything, under 1 ms at 32K.
Phase A dominates: lambda = 0 (step-parallel fold) 9.5 ms at 32K; lambda = 512 (merge kernel, sequential over
the L / chunk steps with only B x Hs programs, 8 for Llama-3 GQA at batch 1) about 0.4 ms per step, 205 ms at
32K grouped and 96 ms expanded (Hq programs). Each step re-scores lambda + chunk candidates and ranks them, and
the per-step cost is latency (dependent global loads of H and scratch), not FLOPs: that kernel is the place
to look next.
"""

from __future__ import annotations

import functools
import math
import time

import torch
import triton
import triton.language as tl

from ..common import LolaParams, ensure_state, to_storage
from ..config import LolaConfig
from ..state import LolaState
from ._host import (
    COMBINE_CODES,
    SCHED_FIELDS,
    alloc,
    ensure_contiguous_state,
    fp32_dot_precision,
    last_dim_contiguous,
    merge_mode,
)
from .linear_prefix import fold_and_readout
from .merge import launch_merge
from .merge_steps import launch_merge_steps


@triton.jit(do_not_specialize=["spi_t", "LAM", "L", "base_new"])
def _attn_kernel(
    Q, sq_b, sq_h, sq_l,               # (B, Hq, L, D) new queries
    KU, VU, su_b, su_h, su_n,          # unified keys / values (B, Hs, P, D)
    SPI, spi_t, LAM,                   # sparse lists (n_steps + 1, B * Hs, LAM) int32
    SCHED,                             # (n_steps, 9) int32
    LN, LD,                            # linear readout (B, Hq, L, D), (B, Hq, L) fp32
    FAC,                               # (Hq,) window factor logits
    Out, so_b, so_h, so_l,               # (B, Hq, L, D) output
    Hq, Hs, L, base_new, qk_scale, eps,
    GROUP: tl.constexpr, D: tl.constexpr, COMBINE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr,
):
    t = tl.program_id(0)
    mb = tl.program_id(1)
    bh = tl.program_id(2)
    b = bh // Hq
    hq = bh % Hq
    hs = hq // GROUP
    DT: tl.constexpr = KU.dtype.element_ty
    row = SCHED + t * 9  # SCHED_FIELDS
    seg = tl.load(row + 5)
    if mb * BLOCK_M < seg:
        ns = tl.load(row + 3)          # sparse size after this step's merge
        q0 = tl.load(row + 4)
        w_lo = tl.load(row + 6)
        w_hi = tl.load(row + 7)
        has_lin = tl.load(row + 8)
        offs_d = tl.arange(0, D)
        li = mb * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = li < seg
        rows = q0 + li                             # index among the new tokens
        qu = base_new + rows                       # unified index of the query's own key
        q = tl.load(Q + b * sq_b + hq * sq_h + rows[:, None] * sq_l + offs_d[None, :], mask=rmask[:, None],
                    other=0.0)
        kbase = KU + b * su_b + hs * su_h
        vbase = VU + b * su_b + hs * su_h
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        # sparse cache of this step (no causal mask: every cached position precedes the window)
        spi = SPI + (t + 1) * spi_t + (b * Hs + hs) * LAM
        for j0 in range(0, ns, BLOCK_N):
            cols = j0 + tl.arange(0, BLOCK_N)
            cmask = cols < ns
            cu = tl.load(spi + cols, mask=cmask, other=0)
            k = tl.load(kbase + cu[:, None] * su_n + offs_d[None, :], mask=cmask[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
            s = tl.where(cmask[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            v = tl.load(vbase + cu[:, None] * su_n + offs_d[None, :], mask=cmask[:, None], other=0.0)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(DT), v, input_precision=PREC)
            m_i = m_new
        # causal window [w_lo, own position]
        w_end = tl.minimum(w_hi, base_new + q0 + tl.minimum(seg, mb * BLOCK_M + BLOCK_M))
        for j0 in range(w_lo, w_end, BLOCK_N):
            cols = j0 + tl.arange(0, BLOCK_N)
            cmask = cols < w_end
            k = tl.load(kbase + cols[:, None] * su_n + offs_d[None, :], mask=cmask[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
            s = tl.where(cmask[None, :] & (cols[None, :] <= qu[:, None]), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            v = tl.load(vbase + cols[:, None] * su_n + offs_d[None, :], mask=cmask[:, None], other=0.0)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(DT), v, input_precision=PREC)
            m_i = m_new
        if has_lin != 0:
            lrow = (b * Hq + hq) * L + rows
            num = tl.load(LN + lrow[:, None] * D + offs_d[None, :], mask=rmask[:, None], other=0.0)
            den = tl.load(LD + lrow, mask=rmask, other=0.0)
            fac = tl.load(FAC + hq).to(tl.float32)
            g = 1.0 / (1.0 + tl.exp(-fac))
            if COMBINE == 3:  # calibrated: m_i is the max logit in log2 units
                w = tl.exp(tl.minimum(fac - m_i * 0.6931471805599453, 80.0))  # ln 2
                y = (acc + w[:, None] * num) / (l_i * (1.0 + eps) + w * den)[:, None]
            elif COMBINE == 4:  # lola (the authors' formula, common.mix): weight e^(-f-m), eps*e^-m/g
                m_e = m_i * 0.6931471805599453
                w = tl.exp(tl.minimum(-fac - m_e, 80.0))
                eps_m = eps * tl.exp(tl.minimum(-m_e, 80.0)) * (1.0 + tl.exp(-fac))
                y = (acc + w[:, None] * num) / (l_i + w * den + eps_m)[:, None]
            elif COMBINE == 1:  # lolcats
                y = (g * acc + num) / (g * l_i + den + eps)[:, None]
            elif COMBINE == 2:  # normalized
                y = g * (acc / l_i[:, None]) + (1.0 - g) * (num / (den + eps)[:, None])
            else:  # gated
                y = (g * acc + (1.0 - g) * num) / (g * l_i + (1.0 - g) * den + eps)[:, None]
        else:
            y = acc / l_i[:, None]
        tl.store(Out + b * so_b + hq * so_h + rows[:, None] * so_l + offs_d[None, :], y.to(Out.dtype.element_ty),
                 mask=rmask[:, None])


@functools.lru_cache(maxsize=256)
def build_schedule(pos: int, ns0: int, nw0: int, n_folded0: int, L: int,
                   cfg: LolaConfig) -> tuple[tuple[tuple[int, ...], ...], int, int, int]:
    """Host-side plan of a chunked prefill of L tokens continuing a state of ``pos`` tokens with ``ns0``
    sparse and ``nw0`` window pairs (unified index layout [sparse | window | new]).

    Returns (rows, n_folded_after, max candidates in one merge, needs_scores). Each row is
    (ns_before, leave_lo, n_leave, keep, q0, seg, w_lo, w_hi, has_lin), mirroring ``lola_chunked``:
    evict the window pairs older than window_start(c), keep ``cfg.keep(window_start(c), n)`` of the n candidates
    (the pinned sinks among them), append the segment, attend with its queries. Cached per (sizes, L, cfg)."""
    chunk = cfg.chunk_size
    rows = []
    w_lo, w_hi = ns0, ns0 + nw0
    first_pos = pos - nw0                      # position of unified index ns0 (window is contiguous)
    ns, n_folded, cap, needs_scores = ns0, n_folded0, 0, 0
    i = 0
    while i < L:
        p = pos + i
        c = p // chunk
        seg = min(L - i, (c + 1) * chunk - p)
        ws = cfg.window_start(c)
        n_ev = max(0, min(ws - (first_pos + w_lo - ns0), w_hi - w_lo))
        n = ns + n_ev
        keep = cfg.keep(ws, n) if n_ev else ns
        ev_lo = w_lo
        w_lo += n_ev
        w_hi += seg
        n_folded += n - keep
        cap = max(cap, n)
        needs_scores |= int(0 < keep < n)
        rows.append((ns, ev_lo, n_ev, keep, i, seg, w_lo, w_hi, int(n_folded > 0)))
        ns = keep
        i += seg
    return tuple(rows), n_folded, cap, needs_scores


@functools.lru_cache(maxsize=64)
def _schedule_tensor(rows: tuple, device: str) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int32).view(-1, SCHED_FIELDS).to(device)


def _mark(marks: list | None, name: str, device: torch.device) -> None:
    """Append (name, CUDA event or host time) to ``marks`` when profiling."""
    if marks is None:
        return
    if device.type == "cuda":
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        marks.append((name, ev))
    else:
        marks.append((name, time.perf_counter()))


def marks_ms(marks: list) -> dict[str, float]:
    """Milliseconds between consecutive marks (synchronizes CUDA first), keyed by the later mark's name."""
    if marks and isinstance(marks[0][1], torch.cuda.Event):
        torch.cuda.synchronize()
        return {n: a.elapsed_time(b) for (_, a), (n, b) in zip(marks, marks[1:])}
    return {n: 1000 * (b - a) for (_, a), (n, b) in zip(marks, marks[1:])}


def prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LolaState, params: LolaParams,
            marks: list | None = None) -> torch.Tensor:
    """LoLA attention for L new tokens continuing ``state`` (updated in place), as ``lola_chunked``.

    With ``marks`` (a list) it records the phase boundaries: setup, merge (phase A), attention (phase B),
    finalize; read them with ``marks_ms``."""
    _mark(marks, "start", q.device)
    ensure_state(state, k, params)
    ensure_contiguous_state(state)
    cfg = params.cfg
    b, hq, L, d = q.shape
    dev = q.device
    ns0, nw0 = state.sp_k.shape[2], state.win_k.shape[2]
    rows, n_folded, cap, needs_scores = build_schedule(state.pos, ns0, nw0, state.n_folded, L, cfg)
    n_steps = len(rows)
    sched = _schedule_tensor(rows, str(dev))
    ks, vs = last_dim_contiguous(to_storage(k, params)), last_dim_contiguous(to_storage(v, params))
    hs = ks.shape[1]
    if ns0 == 0 and nw0 == 0:
        ku, vu = ks, vs
    else:
        ku = torch.cat([state.sp_k, state.win_k, ks], dim=2)
        vu = torch.cat([state.sp_v, state.win_v, vs], dim=2)
    new_pos = torch.arange(state.pos - nw0, state.pos + L, device=dev)
    pu = torch.cat([state.sp_pos, new_pos.view(1, 1, -1).expand(b, hs, -1)], dim=2)
    q = last_dim_contiguous(q)
    lam = max(cfg.sparse + cfg.sinks, 1)
    spi = alloc((n_steps + 1, b * hs, lam), torch.int32, dev)
    if ns0:
        spi[0, :, :ns0] = torch.arange(ns0, dtype=torch.int32, device=dev)
    any_lin = rows[-1][8] != 0
    any_merge = any(r[2] for r in rows)
    ln = alloc((b, hq, L, d), torch.float32, dev) if any_lin else None
    ld = alloc((b, hq, L), torch.float32, dev) if any_lin else None
    _mark(marks, "setup", dev)
    if (any_merge or any_lin) and cfg.sparse == 0:  # no scoring (only sinks stay): parallel over steps
        fold_and_readout(params, state, ku, vu, rows, q if any_lin else None, ln, ld)
        spi[1:] = torch.arange(lam, dtype=torch.int32, device=dev)  # the kept pairs: unified indices 0 .. keep-1
    elif any_merge or any_lin:
        if merge_mode() == "persistent":
            launch_merge(params, state, ku, vu, pu, sched, n_steps, spi, cap, q=q if any_lin else None, ln=ln,
                         ld=ld, need_scores=bool(needs_scores))
        else:  # $LOLA_MERGE=stepwise: a few wide launches per step (merge_steps.py)
            launch_merge_steps(params, state, ku, vu, pu, sched, rows, spi, cap, q=q if any_lin else None, ln=ln,
                               ld=ld, need_scores=bool(needs_scores))
    else:  # nothing leaves the window: every step keeps the initial sparse list
        spi[1:] = spi[0]
    _mark(marks, "merge", dev)
    out = alloc((b, hq, L, d), q.dtype, dev)
    dummy = torch.zeros(1, dtype=torch.float32, device=dev)
    block_m = max(16, min(64 if q.dtype != torch.float32 else 32, triton.next_power_of_2(max(r[5] for r in rows))))
    max_seg = max(r[5] for r in rows)
    fac = params.window_factors.detach()
    _attn_kernel[(n_steps, triton.cdiv(max_seg, block_m), b * hq)](
        q, q.stride(0), q.stride(1), q.stride(2),
        ku, vu, ku.stride(0), ku.stride(1), ku.stride(2),
        spi, spi.stride(0), lam, sched,
        ln if ln is not None else dummy, ld if ld is not None else dummy, fac,
        out, out.stride(0), out.stride(1), out.stride(2),
        hq, hs, L, ns0 + nw0, (d ** -0.5) * math.log2(math.e), float(cfg.eps),
        GROUP=params.group, D=d, COMBINE=COMBINE_CODES[cfg.combine],
        BLOCK_M=block_m, BLOCK_N=64 if q.dtype != torch.float32 else 32, PREC=fp32_dot_precision(q.dtype),
        num_warps=4 if d <= 64 else 8,
    )
    _mark(marks, "attention", dev)
    # final state: sparse cache of the last step, the window range, counters
    keep, w_lo, w_hi = rows[-1][3], rows[-1][6], rows[-1][7]
    idx = spi[n_steps, :, :keep].view(b, hs, keep).long()
    gidx = idx.unsqueeze(-1).expand(-1, -1, -1, d)
    state.sp_k, state.sp_v = ku.gather(2, gidx), vu.gather(2, gidx)
    state.sp_pos = pu.gather(2, idx)
    state.win_k = ku[:, :, w_lo:w_hi].contiguous()
    state.win_v = vu[:, :, w_lo:w_hi].contiguous()
    state.win_pos = new_pos[w_lo - ns0:w_hi - ns0]
    state.pos += L
    state.n_folded = n_folded
    _mark(marks, "finalize", dev)
    return out
