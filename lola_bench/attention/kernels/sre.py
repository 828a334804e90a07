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
import os

import torch
import triton
import triton.language as tl

from ..common import LolaParams, leaving_count, pop_candidates
from ..scorers import ScoreContext
from ..state import LolaState

# One int32 schedule row per chunk step (see prefill.build_schedule): ns_before, leave_lo, n_leave, keep, q0, seg,
# w_lo, w_hi, has_lin. The kernels read the fields at these offsets.
SCHED_FIELDS = 9

PHI_CODES = {"hedgehog": 0, "hedgehog-identity": 0, "elu": 1, "relu": 2}
COMBINE_CODES = {"gated": 0, "lolcats": 1, "normalized": 2, "calibrated": 3}


# ----------------------------------------------------------------------------------------------------------------
# shared jit helpers (also used by decode.py and prefill.py)

@triton.jit
def feature_parts(x, w_ptr, offs_d, eps_r, PHI: tl.constexpr, LEARNED: tl.constexpr, D: tl.constexpr,
                  PREC: tl.constexpr):
    """Feature map of a (M, D) tile ``x`` (model dtype) -> (part0, part1), each (M, D) fp32.

    LEARNED: h = x @ W (hedgehog, W (D, D) at w_ptr), else h = x. PHI 0: [softmax(h), softmax(-h)] clamped
    at eps (F = 2D); 1: elu(h) + 1; 2: relu(h) (F = D; part1 = part0, unused). Intermediate values are
    rounded to the model dtype where torch computes them in it, so phi matches ``feature_map(x).float()``.
    """
    DT: tl.constexpr = x.dtype
    if LEARNED:
        w = tl.load(w_ptr + offs_d[:, None] * D + offs_d[None, :])
        h = tl.dot(x, w, input_precision=PREC).to(DT).to(tl.float32)
    else:
        h = x.to(tl.float32)
    if PHI == 0:
        m1 = tl.max(h, 1)
        e1 = tl.exp(h - m1[:, None])
        p1 = tl.maximum((e1 / tl.sum(e1, 1)[:, None]).to(DT).to(tl.float32), eps_r)
        m2 = tl.max(-h, 1)
        e2 = tl.exp(-h - m2[:, None])
        p2 = tl.maximum((e2 / tl.sum(e2, 1)[:, None]).to(DT).to(tl.float32), eps_r)
    elif PHI == 1:
        p1 = (tl.where(h > 0, h, tl.exp(h) - 1.0).to(DT).to(tl.float32) + 1.0).to(DT).to(tl.float32)
        p2 = p1
    else:
        p1 = tl.maximum(h, 0.0)
        p2 = p1
    return p1, p2


@triton.jit
def order_key(x):
    """int32 keys that order fp32 scores as torch's sort does: -0.0 and +0.0 equal, every NaN above +inf (one
    canonical NaN, whatever its sign bit: CPUs make negative NaNs), otherwise the float order."""
    kb = x.to(tl.int32, bitcast=True)
    kb = tl.where(kb == -2147483648, 0, kb)
    kb = tl.where(x != x, 0x7FC00000, kb)
    return tl.where(kb >= 0, kb, kb ^ 0x7FFFFFFF)


# ----------------------------------------------------------------------------------------------------------------
# the merge kernel

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
                        hbase = H + (b * Hq + hq) * F * D
                        sbase = S + (b * Hq + hq) * F
                        den = tl.sum(p1 * tl.load(sbase + offs_d)[None, :], 1)
                        if NPARTS == 2:
                            den += tl.sum(p2 * tl.load(sbase + D + offs_d)[None, :], 1)
                        den += eps
                        e2 = tl.zeros([BLOCK_N], dtype=tl.float32)
                        for dv0 in range(0, D, BLOCK_DV):
                            hp = hbase + offs_d[:, None] * D + dv0 + offs_dv[None, :]
                            num = tl.dot(p1, tl.load(hp), input_precision=PREC)
                            if NPARTS == 2:
                                num += tl.dot(p2, tl.load(hp + D * D), input_precision=PREC)
                            vv = tl.load(vbase + cu[:, None] * su_n + dv0 + offs_dv[None, :], mask=rmask[:, None],
                                         other=0.0).to(tl.float32)
                            diff = vv - num / den[:, None]
                            e2 += tl.sum(diff * diff, 1)
                        err += tl.sqrt(e2)
                    sc = err / GROUP
                else:
                    sc = tl.load(PSC + b * sp_b + hs * sp_h + cu, mask=rmask, other=0.0)
                if sinks > 0:  # pinned sinks outrank every scored candidate (ties among them: earlier first)
                    cpos = tl.load(PU + b * pu_b + hs * pu_h + cu, mask=rmask, other=0)
                    sc = tl.where(cpos < sinks, float("inf"), sc)
                tl.store(scr + rows, sc, mask=rmask)
        tl.debug_barrier()

        if SELECT == 1:
            # 2+3. selection in registers: all n candidates as one NPAD-vector. The keep-th largest score is found
            # by bisection over the scores' order-preserving int32 keys (<= 32 block reductions, no global
            # scratch traffic); ties at that threshold go to the earliest candidates (inclusive cumsum), which is
            # split_topk's rule. A cumsum of the kept flags gives both compacted lists.
            c_rows = tl.arange(0, NPAD)
            c_mask = c_rows < n
            c_cu = tl.where(c_rows < ns, tl.load(spi_in + c_rows, mask=c_rows < ns, other=0), ev_lo + c_rows - ns)
            if keep >= n:
                c_kept = c_mask
            elif keep == 0:
                c_kept = c_rows < 0
            else:
                key = order_key(tl.load(scr + c_rows, mask=c_mask, other=0.0)).to(tl.int64)
                lo = tl.min(tl.where(c_mask, key, 2147483647), 0)
                hi = tl.max(tl.where(c_mask, key, -2147483648), 0)
                while lo < hi:  # invariant: at least keep candidates have key >= lo
                    mid = lo + (hi - lo + 1) // 2
                    ok = tl.sum((c_mask & (key >= mid)).to(tl.int32), 0) >= keep
                    lo = tl.where(ok, mid, lo)
                    hi = tl.where(ok, hi, mid - 1)
                gt = c_mask & (key > lo)
                eq = c_mask & (key == lo)
                need = keep - tl.sum(gt.to(tl.int32), 0)
                c_kept = gt | (eq & (tl.cumsum(eq.to(tl.int32), 0) <= need))
            c_ki = c_kept.to(tl.int32)
            c_before = tl.cumsum(c_ki, 0) - c_ki
            tl.store(spi_out + c_before, c_cu, mask=c_kept)
            tl.store(outl + c_rows - c_before, c_cu, mask=c_mask & (c_ki == 0))
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

def fp32_dot_precision(dtype: torch.dtype) -> str:
    """tl.dot precision for fp32 operands (phi @ H, phi^T @ v): $LOLA_TRITON_FP32_DOT, else ieee for float32
    models and tf32 for 16-bit models (16-bit values are exact in tf32; only H is rounded to 10 mantissa bits)."""
    env = os.environ.get("LOLA_TRITON_FP32_DOT")
    if env in ("ieee", "tf32", "tf32x3"):
        return env
    return "ieee" if dtype == torch.float32 else "tf32"


def alloc(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """torch.empty, or filled with NaN / -1 when $LOLA_TRITON_DEBUG_FILL=1 so that unwritten elements show up."""
    if os.environ.get("LOLA_TRITON_DEBUG_FILL") == "1":
        return torch.full(shape, float("nan") if dtype.is_floating_point else -1, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def rounded_eps(eps: float, dtype: torch.dtype) -> float:
    """The feature-map clamp as torch applies it to a tensor of ``dtype`` (1e-12 is 0 in float16)."""
    return float(torch.tensor(eps, dtype=dtype).float())


def feature_eps(params: LolaParams) -> float:
    return float(getattr(params.feature_map_k, "eps", 0.0))


def _kernel_weight(fm, dtype: torch.dtype, device) -> torch.Tensor:
    """fm.layer as a contiguous tensor of ``dtype`` on ``device``, converted once and kept on the feature map
    until the weight changes (in place, or by moving the module): decode would otherwise copy it every token
    when the checkpoint's weights are float32 and the model runs in 16 bits."""
    w = fm.layer
    key = (dtype, str(device), w._version, w.data_ptr())
    cached = getattr(fm, "_kernel_weight", None)
    if cached is None or cached[0] != key:
        cached = (key, w.detach().to(device=device, dtype=dtype).contiguous())
        fm._kernel_weight = cached
    return cached[1]


def learned_weights(params: LolaParams, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_k, W_q) as (Hq, D, D) in the model dtype for hedgehog; 1-element dummies otherwise."""
    if params.cfg.feature_map == "hedgehog":
        return _kernel_weight(params.feature_map_k, dtype, device), _kernel_weight(params.feature_map_q, dtype, device)
    dummy = torch.zeros(1, dtype=dtype, device=device)
    return dummy, dummy


TILE_KEYS = ("BLOCK_N", "BLOCK_R", "BLOCK_C", "BLOCK_DV", "num_warps")


def block_sizes(d: int, dtype: torch.dtype, learned: bool = False) -> dict:
    """Tiles and warps of the merge kernel (float32 models use ieee fp32 dots, and learned hedgehog keeps W tiles
    live: both need more registers, so smaller tiles). The 16-bit tiles do not spill for sm_90 with Triton 3.6 or
    3.9 (``gpu_bench.py --compile-check``; learned hedgehog at 64-row tiles spilled 8 bytes).
    ``$LOLA_MERGE_TILES`` ("BLOCK_N=32,num_warps=4", powers of two) overrides any of them: gpu_bench's tile sweep
    uses it to time alternatives on a GPU."""
    big = d <= 64 and dtype != torch.float32 and not learned
    tiles = dict(BLOCK_N=64 if big else 32, BLOCK_R=32, BLOCK_C=128, BLOCK_DV=min(d, 32), num_warps=8)
    spec = os.environ.get("LOLA_MERGE_TILES", "").strip()
    for item in filter(None, (x.strip() for x in spec.split(","))):
        key, _, val = (x.strip() for x in item.partition("="))
        if key not in TILE_KEYS or not val.isdigit() or int(val) < 1 or int(val) & (int(val) - 1):
            raise ValueError(f"LOLA_MERGE_TILES: {item!r} is not KEY=power-of-two with KEY in {', '.join(TILE_KEYS)}")
        tiles[key] = int(val)
    if not (16 <= tiles["BLOCK_DV"] <= d and tiles["BLOCK_N"] >= 16 and tiles["num_warps"] <= 32):
        raise ValueError(f"LOLA_MERGE_TILES: need 16 <= BLOCK_DV <= head_dim ({d}), BLOCK_N >= 16 (tl.dot) and "
                         f"num_warps <= 32, got {tiles}")
    return tiles


SELECT_MAX_NPAD = 2048  # register-resident selection up to this many (padded) candidates; rank counting beyond


def select_mode(cand_cap: int) -> tuple[int, int]:
    """(SELECT, NPAD) for the merge kernel: 1 = selection in registers by threshold bisection (the default while the
    candidates fit SELECT_MAX_NPAD), 0 = rank counting over global scratch (O(n^2) compares in serial tiles; the
    selection the kernel had before). ``$LOLA_MERGE_SELECT=rank|threshold`` forces one (``threshold`` still falls
    back to rank counting above the register limit). Both select exactly the same pairs."""
    npad = triton.next_power_of_2(max(cand_cap, 16))
    want = os.environ.get("LOLA_MERGE_SELECT", "threshold")
    if want not in ("rank", "threshold"):
        raise ValueError(f"LOLA_MERGE_SELECT must be 'rank' or 'threshold', got {want!r}")
    return (1, npad) if want == "threshold" and npad <= SELECT_MAX_NPAD else (0, 16)


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


def ensure_contiguous_state(state: LolaState) -> None:
    """The kernels address H and s as dense (B, Hq, F, D) / (B, Hq, F) tensors."""
    if not state.H.is_contiguous():
        state.H = state.H.contiguous()
    if not state.s.is_contiguous():
        state.s = state.s.contiguous()


@functools.lru_cache(maxsize=64)
def _one_step_schedule(ns: int, n_ev: int, keep: int, device: str) -> torch.Tensor:
    """Cached so that steady-state decode does no host-to-device copy (and no implicit sync) per boundary."""
    return torch.tensor([[ns, ns, n_ev, keep, 0, 0, 0, 0, 0]], dtype=torch.int32).to(device)


def evict_before_triton(state: LolaState, params: LolaParams, window_start: int) -> None:
    """``common.evict_before`` with the scoring and folding in the merge kernel (one schedule step).

    The window is contiguous and ends at ``state.pos - 1``, so the number of leaving pairs is known on the
    host (no device sync)."""
    n_ev = leaving_count(state, window_start)
    if n_ev == 0:
        return
    b, hs = state.win_k.shape[:2]
    ns = state.sp_k.shape[2]
    cand_k, cand_v, cand_pos = pop_candidates(state, n_ev)
    n = ns + n_ev
    keep = params.cfg.keep(window_start, n)
    if keep == n:
        state.sp_k, state.sp_v, state.sp_pos = cand_k, cand_v, cand_pos
        return
    ensure_contiguous_state(state)
    dev = cand_k.device
    lam = max(params.cfg.sparse + params.cfg.sinks, 1)
    spi = alloc((2, b * hs, lam), torch.int32, dev)
    if ns:
        spi[0, :, :ns] = torch.arange(ns, dtype=torch.int32, device=dev)
    sched = _one_step_schedule(ns, n_ev, keep, str(dev))
    launch_merge(params, state, cand_k, cand_v, cand_pos, sched, 1, spi, n, need_scores=keep > 0)
    state.n_folded += n - keep
    idx = spi[1, :, :keep].view(b, hs, keep).long()
    gidx = idx.unsqueeze(-1).expand(-1, -1, -1, cand_k.shape[-1])
    state.sp_k, state.sp_v = cand_k.gather(2, gidx), cand_v.gather(2, gidx)
    state.sp_pos = cand_pos.gather(2, idx)

