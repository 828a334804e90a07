"""Shared @triton.jit helpers of the LoLA kernels (merge.py, prefill.py, decode.py).

Triton decides between compiling and interpreting when a function is decorated, so this module must be imported
(or reloaded) under the same ``TRITON_INTERPRET`` setting as the kernels that call it.
"""

from __future__ import annotations

import triton
import triton.language as tl


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
def sre_tile(p1, p2, hbase, sbase, vrows, rmask, eps, offs_d, offs_dv, NPARTS: tl.constexpr, D: tl.constexpr,
             BLOCK_DV: tl.constexpr, PREC: tl.constexpr, BLOCK_N: tl.constexpr):
    """The self-recall error || v - phi(k)^T H / (phi(k)^T s + eps) || of a tile of candidates for one query head:
    (p1, p2) its feature parts (BLOCK_N, D) fp32, ``hbase`` / ``sbase`` that head's H (F, D) / s (F), ``vrows`` the
    pointers of the candidates' value rows (BLOCK_N, 1; columns added here). One value tile of BLOCK_DV at a time."""
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
        vv = tl.load(vrows + dv0 + offs_dv[None, :], mask=rmask[:, None], other=0.0).to(tl.float32)
        diff = vv - num / den[:, None]
        e2 += tl.sum(diff * diff, 1)
    return tl.sqrt(e2)


@triton.jit
def order_key(x):
    """int32 keys that order fp32 scores as torch's sort does: -0.0 and +0.0 equal, every NaN above +inf (one
    canonical NaN, whatever its sign bit: CPUs make negative NaNs), otherwise the float order."""
    kb = x.to(tl.int32, bitcast=True)
    kb = tl.where(kb == -2147483648, 0, kb)
    kb = tl.where(x != x, 0x7FC00000, kb)
    return tl.where(kb >= 0, kb, kb ^ 0x7FFFFFFF)


@triton.jit
def threshold_select(sc, c_mask, keep):
    """Kept flags of the ``keep`` best of the candidates ``c_mask`` whose scores ``sc`` (fp32 vector) sit in
    registers, with split_topk's rule (higher score first; equal scores: the earlier candidate). The keep-th largest
    score is found by bisection over the order-preserving int32 keys (<= 32 block reductions, no global scratch);
    ties at that threshold go to the earliest candidates (inclusive cumsum). Needs 0 < keep < #candidates."""
    key = order_key(sc).to(tl.int64)
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
    return gt | (eq & (tl.cumsum(eq.to(tl.int32), 0) <= need))


@triton.jit
def candidates(spi_in, ns, ev_lo, n, NPAD: tl.constexpr):
    """The n candidates of a chunk boundary as one NPAD-vector (rows, valid mask, table row of each): the ns cached
    pairs (their rows read from ``spi_in``, in position order), then the pairs leaving the window (rows ev_lo on)."""
    c_rows = tl.arange(0, NPAD)
    c_mask = c_rows < n
    c_cu = tl.where(c_rows < ns, tl.load(spi_in + c_rows, mask=c_rows < ns, other=0), ev_lo + c_rows - ns)
    return c_rows, c_mask, c_cu


@triton.jit
def store_split(c_kept, c_rows, c_mask, c_cu, kept_out, out_out):
    """Compact the candidates' rows ``c_cu`` into the kept list (``kept_out``) and the rest (``out_out``), both in
    candidate order: a cumsum of the kept flags gives each one's place."""
    c_ki = c_kept.to(tl.int32)
    c_before = tl.cumsum(c_ki, 0) - c_ki
    tl.store(kept_out + c_before, c_cu, mask=c_kept)
    tl.store(out_out + c_rows - c_before, c_cu, mask=c_mask & (c_ki == 0))
