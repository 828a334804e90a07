"""Chunk-boundary merge kernel: SRE scoring, top-lambda selection and folding into (H, s), in one launch.

One program per (batch, storage head) walks a *schedule* of chunk steps (one row per chunk-aligned
segment, see ``prefill.build_schedule``). At each step it

  1. scores the candidates (the current sparse cache + the pairs leaving the window) against the
     current linear state: SRE = || v - phi(k)^T H / (phi(k)^T s + eps) ||, mean over the query heads
     of the group (grouped GQA), or reads a precomputed score (random / key_norm / recency / sink);
  2. selects the ``keep`` best with the tie rule of ``common.split_topk`` (higher score first, equal
     scores: the earlier candidate wins) and writes the kept candidates, in candidate (= position)
     order, as the sparse index list of the step. By default (``select_mode``) all candidates sit in
     registers as one vector: the keep-th largest score by bisection over order-preserving integer keys,
     ties by a cumsum, the compaction by a cumsum: a few dozen block reductions per step. The older
     rank counting (O(n^2) compares in serial tiles through global scratch) remains for candidate sets
     too large for registers and as ``$LOLA_MERGE_SELECT=rank``; both keep the same pairs (tested);
  3. folds every other candidate into H and s (per query head of the group);
  4. optionally reads the linear part out for the queries of the step: phi(q)^T H and phi(q)^T s
     (prefill; decode computes its readout in the decode kernel instead).

The steps are sequential (each selection depends on the state left by the previous fold), so they run
inside the kernel; the phases of one step are separated by ``tl.debug_barrier()`` (global scratch
written by one phase is read by other threads of the same program in the next; on NVIDIA GPUs this is
bar.sync, which orders global memory within a thread block; the interpreter runs a program serially).

Feature maps are evaluated in-kernel (hedgehog with its learned per-head W, hedgehog-identity, elu,
relu); values are rounded to the model dtype like ``feature_map(x).to(float32)`` in the torch path.
Taylor (F = 1 + d + d^2) and the ``attention`` scorer (mass accumulated by every attention call) are
not supported here: ``kernels.unsupported_reason`` sends them to the torch path.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ..common import LolaParams, keep_selected, take_candidates
from ..scorers import ScoreContext
from ..state import LolaState
from ._host import (
    PHI_CODES,
    alloc,
    block_sizes,
    ensure_contiguous_state,
    feature_eps,
    fp32_dot_precision,
    learned_weights,
    merge_mode,
    rounded_eps,
    select_mode,
)
from ._jit import candidates, feature_parts, order_key, sre_tile, store_split, threshold_select


@triton.jit(do_not_specialize=["n_steps", "spi_t", "LAM", "cand_cap", "L", "sinks"])
def _merge_kernel(
    KU, VU, su_b, su_h, su_n,          # unified storage keys / values (B, Hs, P, D), unit stride on D
    PSC, sp_b, sp_h,                   # precomputed scores (B, Hs, P) fp32 (SCORE_MODE 1)
    PU, pu_b, pu_h, sinks,             # positions (B, Hs, P) int64; candidates at positions < sinks always stay
    Q, sq_b, sq_h, sq_l,               # new queries (B, Hq, L, D) for the readout
    WK, WQ,                            # hedgehog W_k, W_q (Hq, D, D) in DT (LEARNED)
    H, S,                              # (B, Hq, F, D), (B, Hq, F) fp32, contiguous
    SCHED, n_steps,                    # (n_steps, SCHED_FIELDS) int32
    SPI, spi_t, LAM,                   # sparse index lists (n_steps + 1, B * Hs, LAM) int32, contiguous
    LN, LD,                            # readout (B, Hq, L, D) and (B, Hq, L) fp32, contiguous
    SCR, FLG, OUTL, cand_cap,          # scratch (B * Hs, cand_cap): fp32 scores, int32 flags, int32 folded list
    Hs, Hq, L, eps_r, eps,
    GROUP: tl.constexpr, D: tl.constexpr, NPARTS: tl.constexpr,
    PHI: tl.constexpr, LEARNED: tl.constexpr, SCORE_MODE: tl.constexpr, READOUT: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_DV: tl.constexpr,
    PREC: tl.constexpr, SELECT: tl.constexpr, NPAD: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // Hs
    hs = pid % Hs
    F: tl.constexpr = NPARTS * D
    offs_d = tl.arange(0, D)
    offs_dv = tl.arange(0, BLOCK_DV)
    kbase = KU + b * su_b + hs * su_h
    vbase = VU + b * su_b + hs * su_h
    scr = SCR + pid * cand_cap
    flg = FLG + pid * cand_cap
    outl = OUTL + pid * cand_cap
    for t in range(n_steps):
        row = SCHED + t * 9  # SCHED_FIELDS
        ns = tl.load(row + 0)
        ev_lo = tl.load(row + 1)
        n_ev = tl.load(row + 2)
        keep = tl.load(row + 3)
        q0 = tl.load(row + 4)
        seg = tl.load(row + 5)
        has_lin = tl.load(row + 8)
        n = ns + n_ev
        spi_in = SPI + t * spi_t + pid * LAM
        spi_out = spi_in + spi_t

        # 1. scores (only when a real choice has to be made)
        if (keep > 0) & (keep < n):
            for j0 in range(0, n, BLOCK_N):
                rows = j0 + tl.arange(0, BLOCK_N)
                rmask = rows < n
                cu = tl.where(rows < ns, tl.load(spi_in + rows, mask=rows < ns, other=0), ev_lo + rows - ns)
                cu = tl.where(rmask, cu, 0)
                if SCORE_MODE == 0:
                    x = tl.load(kbase + cu[:, None] * su_n + offs_d[None, :], mask=rmask[:, None], other=0.0)
                    err = tl.zeros([BLOCK_N], dtype=tl.float32)
                    if not LEARNED:
                        p1, p2 = feature_parts(x, WK, offs_d, eps_r, PHI, False, D, PREC)
                    for g in range(GROUP):
                        hq = hs * GROUP + g
                        if LEARNED:
                            p1, p2 = feature_parts(x, WK + hq * D * D, offs_d, eps_r, PHI, True, D, PREC)
                        err += sre_tile(p1, p2, H + (b * Hq + hq) * F * D, S + (b * Hq + hq) * F,
                                        vbase + cu[:, None] * su_n, rmask, eps, offs_d, offs_dv, NPARTS, D, BLOCK_DV,
                                        PREC, BLOCK_N)
                    sc = err / GROUP
                else:
                    sc = tl.load(PSC + b * sp_b + hs * sp_h + cu, mask=rmask, other=0.0)
                if sinks > 0:  # pinned sinks outrank every scored candidate (ties among them: earlier first)
                    cpos = tl.load(PU + b * pu_b + hs * pu_h + cu, mask=rmask, other=0)
                    sc = tl.where(cpos < sinks, float("inf"), sc)
                tl.store(scr + rows, sc, mask=rmask)
        tl.debug_barrier()

        if SELECT == 1:
            # 2+3. selection in registers: all n candidates as one NPAD-vector (_jit.threshold_select: the keep-th
            # largest score by bisection over order-preserving int32 keys, ties to the earliest candidates, which is
            # split_topk's rule). A cumsum of the kept flags gives both compacted lists.
            c_rows, c_mask, c_cu = candidates(spi_in, ns, ev_lo, n, NPAD)
            if keep >= n:
                c_kept = c_mask
            elif keep == 0:
                c_kept = c_rows < 0
            else:
                c_kept = threshold_select(tl.load(scr + c_rows, mask=c_mask, other=0.0), c_mask, keep)
            store_split(c_kept, c_rows, c_mask, c_cu, spi_out, outl)
        else:
            # 2. kept flags by rank counting over global scratch (candidates too many for registers): rank = number
            # of candidates that beat this one (higher score, or equal and earlier)
            for r0 in range(0, n, BLOCK_R):
                rows = r0 + tl.arange(0, BLOCK_R)
                rmask = rows < n
                if keep >= n:
                    kept = rmask
                elif keep == 0:
                    kept = rows < 0
                else:
                    k_r = order_key(tl.load(scr + rows, mask=rmask, other=0.0))
                    rank = tl.zeros([BLOCK_R], dtype=tl.int32)
                    for c0 in range(0, n, BLOCK_C):
                        cols = c0 + tl.arange(0, BLOCK_C)
                        cmask = cols < n
                        k_c = order_key(tl.load(scr + cols, mask=cmask, other=0.0))
                        beats = (k_c[None, :] > k_r[:, None]) | ((k_c[None, :] == k_r[:, None]) &
                                                                 (cols[None, :] < rows[:, None]))
                        rank += tl.sum((beats & cmask[None, :]).to(tl.int32), 1)
                    kept = rmask & (rank < keep)
                tl.store(flg + rows, kept.to(tl.int32), mask=rmask)
            tl.debug_barrier()

            # 3. compaction: kept -> sparse list of this step (candidate order), the rest -> folded list
            for r0 in range(0, n, BLOCK_R):
                rows = r0 + tl.arange(0, BLOCK_R)
                rmask = rows < n
                cu = tl.where(rows < ns, tl.load(spi_in + rows, mask=rows < ns, other=0), ev_lo + rows - ns)
                kept_r = tl.load(flg + rows, mask=rmask, other=0)
                before = tl.zeros([BLOCK_R], dtype=tl.int32)
                for c0 in range(0, r0 + BLOCK_R, BLOCK_C):
                    cols = c0 + tl.arange(0, BLOCK_C)
                    kc = tl.load(flg + cols, mask=cols < n, other=0)
                    before += tl.sum(tl.where(cols[None, :] < rows[:, None], kc[None, :], 0), 1)
                tl.store(spi_out + before, cu, mask=rmask & (kept_r != 0))
                tl.store(outl + rows - before, cu, mask=rmask & (kept_r == 0))
        tl.debug_barrier()

        # 4. fold the rest into H, s
        n_out = n - keep
        if n_out > 0:
            for g in range(GROUP):
                hq = hs * GROUP + g
                hbase = H + (b * Hq + hq) * F * D
                sbase = S + (b * Hq + hq) * F
                for dv0 in range(0, D, BLOCK_DV):
                    acc1 = tl.zeros([D, BLOCK_DV], dtype=tl.float32)
                    acc2 = tl.zeros([D, BLOCK_DV], dtype=tl.float32)
                    ssum1 = tl.zeros([D], dtype=tl.float32)
                    ssum2 = tl.zeros([D], dtype=tl.float32)
                    for j0 in range(0, n_out, BLOCK_N):
                        rows = j0 + tl.arange(0, BLOCK_N)
                        rmask = rows < n_out
                        cu = tl.load(outl + rows, mask=rmask, other=0)
                        x = tl.load(kbase + cu[:, None] * su_n + offs_d[None, :], mask=rmask[:, None], other=0.0)
                        p1, p2 = feature_parts(x, WK + hq * D * D, offs_d, eps_r, PHI, LEARNED, D, PREC)
                        p1 = tl.where(rmask[:, None], p1, 0.0)
                        vv = tl.load(vbase + cu[:, None] * su_n + dv0 + offs_dv[None, :], mask=rmask[:, None],
                                     other=0.0).to(tl.float32)
                        acc1 += tl.dot(tl.trans(p1), vv, input_precision=PREC)
                        ssum1 += tl.sum(p1, 0)
                        if NPARTS == 2:
                            p2 = tl.where(rmask[:, None], p2, 0.0)
                            acc2 += tl.dot(tl.trans(p2), vv, input_precision=PREC)
                            ssum2 += tl.sum(p2, 0)
                    hp = hbase + offs_d[:, None] * D + dv0 + offs_dv[None, :]
                    tl.store(hp, tl.load(hp) + acc1)
                    if NPARTS == 2:
                        tl.store(hp + D * D, tl.load(hp + D * D) + acc2)
                    if dv0 == 0:
                        tl.store(sbase + offs_d, tl.load(sbase + offs_d) + ssum1)
                        if NPARTS == 2:
                            tl.store(sbase + D + offs_d, tl.load(sbase + D + offs_d) + ssum2)
        tl.debug_barrier()

        # 5. linear readout for the queries of this step
        if READOUT:
            if has_lin != 0:
                for g in range(GROUP):
                    hq = hs * GROUP + g
                    hbase = H + (b * Hq + hq) * F * D
                    sbase = S + (b * Hq + hq) * F
                    for m0 in range(0, seg, BLOCK_N):
                        rows = q0 + m0 + tl.arange(0, BLOCK_N)
                        rmask = (m0 + tl.arange(0, BLOCK_N)) < seg
                        x = tl.load(Q + b * sq_b + hq * sq_h + rows[:, None] * sq_l + offs_d[None, :],
                                    mask=rmask[:, None], other=0.0)
                        p1, p2 = feature_parts(x, WQ + hq * D * D, offs_d, eps_r, PHI, LEARNED, D, PREC)
                        den = tl.sum(p1 * tl.load(sbase + offs_d)[None, :], 1)
                        if NPARTS == 2:
                            den += tl.sum(p2 * tl.load(sbase + D + offs_d)[None, :], 1)
                        lbase = (b * Hq + hq) * L + rows
                        tl.store(LD + lbase, den, mask=rmask)
                        for dv0 in range(0, D, BLOCK_DV):
                            hp = hbase + offs_d[:, None] * D + dv0 + offs_dv[None, :]
                            num = tl.dot(p1, tl.load(hp), input_precision=PREC)
                            if NPARTS == 2:
                                num += tl.dot(p2, tl.load(hp + D * D), input_precision=PREC)
                            tl.store(LN + lbase[:, None] * D + dv0 + offs_dv[None, :], num, mask=rmask[:, None])
        tl.debug_barrier()


# ----------------------------------------------------------------------------------------------------------------
# host side

def precomputed_scores(params: LolaParams, ku: torch.Tensor, vu: torch.Tensor, pu: torch.Tensor,
                       state: LolaState) -> torch.Tensor:
    """Scores of state-independent scorers for every unified candidate, (B, Hs, P) float32."""
    ctx = ScoreContext(k=ku, v=vu, pos=pu, phi_k=None, H=state.H, s=state.s, acc=None, group=params.group,
                       eps=params.cfg.eps, seed=params.cfg.seed)
    return params.scorer.score(ctx).float().contiguous()


def launch_merge(params: LolaParams, state: LolaState, ku: torch.Tensor, vu: torch.Tensor, pu: torch.Tensor,
                 sched: torch.Tensor, n_steps: int, spi: torch.Tensor, cand_cap: int, *,
                 q: torch.Tensor | None = None, ln: torch.Tensor | None = None, ld: torch.Tensor | None = None,
                 need_scores: bool = True) -> None:
    """Run the merge kernel over ``n_steps`` schedule rows. Updates state.H, state.s in place and fills
    spi[1:]; with ``q`` also writes the linear readout into ``ln``/``ld``."""
    b, hs, _, d = ku.shape
    hq = params.num_heads
    fdim = params.feature_dim
    nparts = fdim // d
    lam = spi.shape[-1]
    dev, dt = ku.device, ku.dtype
    score_mode = 0 if params.cfg.scorer == "sre" else 1
    if score_mode == 1 and need_scores:
        psc = precomputed_scores(params, ku, vu, pu, state)
    else:
        psc = torch.zeros(1, 1, 1, dtype=torch.float32, device=dev)
    readout = q is not None
    if not readout:
        q = ku
        ln = ld = torch.zeros(1, dtype=torch.float32, device=dev)
    wk, wq = learned_weights(params, dt, dev)
    scr = alloc((b * hs, max(cand_cap, 1)), torch.float32, dev)
    select, npad = select_mode(cand_cap)
    flg = alloc((b * hs, max(cand_cap, 1)) if select == 0 else (1,), torch.int32, dev)  # rank counting's flags
    outl = alloc((b * hs, max(cand_cap, 1)), torch.int32, dev)
    _merge_kernel[(b * hs,)](
        ku, vu, ku.stride(0), ku.stride(1), ku.stride(2),
        psc, psc.stride(0), psc.stride(1),
        pu, pu.stride(0), pu.stride(1), int(params.cfg.sinks),
        q, q.stride(0), q.stride(1), q.stride(2),
        wk, wq, state.H, state.s,
        sched, n_steps,
        spi, spi.stride(0), lam,
        ln, ld,
        scr, flg, outl, max(cand_cap, 1),
        hs, hq, q.shape[2] if readout else 1,
        rounded_eps(feature_eps(params), dt), float(params.cfg.eps),
        GROUP=params.group, D=d, NPARTS=nparts,
        PHI=PHI_CODES[params.cfg.feature_map], LEARNED=params.cfg.feature_map == "hedgehog",
        SCORE_MODE=score_mode, READOUT=readout, PREC=fp32_dot_precision(dt), SELECT=select, NPAD=npad,
        **block_sizes(d, dt, params.cfg.feature_map == "hedgehog"),
    )


@functools.lru_cache(maxsize=64)
def _one_step_schedule(ns: int, n_ev: int, keep: int, device: str) -> torch.Tensor:
    """Cached so that steady-state decode does no host-to-device copy (and no implicit sync) per boundary."""
    return torch.tensor([[ns, ns, n_ev, keep, 0, 0, 0, 0, 0]], dtype=torch.int32).to(device)


def evict_before_triton(state: LolaState, params: LolaParams, window_start: int) -> None:
    """``common.evict_before`` with the scoring and folding in the merge kernel (one schedule step); the host
    bookkeeping (``common.take_candidates`` / ``keep_selected``) is shared with it.

    The window is contiguous and ends at ``state.pos - 1``, so the number of leaving pairs is known on the
    host (no device sync)."""
    cand = take_candidates(state, params, window_start)
    if cand is None:
        return
    b, hs = cand.pos.shape[:2]
    n, keep, n_ev = cand.n, cand.keep, cand.n_leaving
    ns = n - n_ev
    ensure_contiguous_state(state)
    dev = cand.k.device
    lam = max(params.cfg.sparse + params.cfg.sinks, 1)
    spi = alloc((2, b * hs, lam), torch.int32, dev)
    if ns:
        spi[0, :, :ns] = torch.arange(ns, dtype=torch.int32, device=dev)
    sched = _one_step_schedule(ns, n_ev, keep, str(dev))
    if merge_mode() == "persistent":
        launch_merge(params, state, cand.k, cand.v, cand.pos, sched, 1, spi, n, need_scores=keep > 0)
    else:
        from .merge_steps import launch_merge_steps

        launch_merge_steps(params, state, cand.k, cand.v, cand.pos, sched, ((ns, ns, n_ev, keep, 0, 0, 0, 0, 0),),
                           spi, n, need_scores=keep > 0)
    state.n_folded += n - keep
    keep_selected(state, cand, spi[1, :, :keep].view(b, hs, keep).long())
