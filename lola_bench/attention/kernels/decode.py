"""Decode kernel: one new token, sparse + window softmax and the linear readout in one pass.

One program per (batch, query head). It streams the storage head's sparse cache, then its window, with
an online softmax (fp32, exact max subtraction at the end, so the combine sees the same max-normalised
sums as ``common.attend``), reads phi(q)^T H and phi(q)^T s out of the linear state, and applies the
combine (gated / lolcats / normalized / calibrated, ``common.mix``) with the head's window factor. With
nothing folded yet (``state.n_folded == 0``) it is exact softmax attention.

phi(q) is computed in-kernel for hedgehog-identity (softmax statistics over the full row, then per
F-block), elu and relu; for learned hedgehog (per-head W) torch computes phi(q) (a few tiny ops) and
the kernel reads it. The chunk-boundary eviction that precedes the attention (every ``chunk`` tokens)
runs in the merge kernel (sre.py) with torch bookkeeping; appending the new pair is a torch ``cat``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..common import LolaParams
from ..state import LolaState
from .sre import COMBINE_CODES, PHI_CODES, alloc, feature_eps, rounded_eps


@triton.jit
def _softmax_block(q, kp, vp, stride_n, n, m_i, l_i, acc, offs_d, qk_scale, BLOCK_N: tl.constexpr):
    """Online-softmax update over keys [0, n) at kp / vp (rows ``stride_n`` apart). Scores are in log2 units."""
    for j0 in range(0, n, BLOCK_N):
        rows = j0 + tl.arange(0, BLOCK_N)
        rmask = rows < n
        k = tl.load(kp + rows[:, None] * stride_n + offs_d[None, :], mask=rmask[:, None], other=0.0).to(tl.float32)
        s = tl.sum(q[None, :] * k, 1) * qk_scale
        s = tl.where(rmask, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 0))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new)
        v = tl.load(vp + rows[:, None] * stride_n + offs_d[None, :], mask=rmask[:, None], other=0.0).to(tl.float32)
        l_i = l_i * alpha + tl.sum(p, 0)
        acc = acc * alpha + tl.sum(p[:, None] * v, 0)
        m_i = m_new
    return m_i, l_i, acc


@triton.jit(do_not_specialize=["ns", "nw"])
def _decode_kernel(
    Q, sq_b, sq_h,                              # (B, Hq, 1, D)
    SPK, SPV, ssp_b, ssp_h, ssp_n, ns,          # sparse cache (B, Hs, ns, D)
    WK, WV, sw_b, sw_h, sw_n, nw,               # window (B, Hs, nw, D)
    H, S, PHIQ,                                 # (B, Hq, F, D), (B, Hq, F) fp32; precomputed phi(q) (B, Hq, F)
    FAC, Out, so_b, so_h,                         # window factor logits (Hq,), out (B, Hq, 1, D)
    Hq, qk_scale, eps_r, eps,
    GROUP: tl.constexpr, D: tl.constexpr, NPARTS: tl.constexpr, PHI: tl.constexpr, PHI_PRE: tl.constexpr,
    HAS_LIN: tl.constexpr, COMBINE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // Hq
    hq = pid % Hq
    hs = hq // GROUP
    F: tl.constexpr = NPARTS * D
    DT: tl.constexpr = Q.dtype.element_ty
    offs_d = tl.arange(0, D)
    qp = Q + b * sq_b + hq * sq_h
    q = tl.load(qp + offs_d).to(tl.float32)
    m_i = tl.full([], float("-inf"), tl.float32)
    l_i = tl.zeros([], tl.float32)
    acc = tl.zeros([D], tl.float32)
    m_i, l_i, acc = _softmax_block(q, SPK + b * ssp_b + hs * ssp_h, SPV + b * ssp_b + hs * ssp_h, ssp_n, ns,
                                   m_i, l_i, acc, offs_d, qk_scale, BLOCK_N)
    m_i, l_i, acc = _softmax_block(q, WK + b * sw_b + hs * sw_h, WV + b * sw_b + hs * sw_h, sw_n, nw,
                                   m_i, l_i, acc, offs_d, qk_scale, BLOCK_N)
    if HAS_LIN:
        offs_f = tl.arange(0, BLOCK_F)
        hbase = H + (b * Hq + hq) * F * D
        sbase = S + (b * Hq + hq) * F
        mx1 = tl.max(q, 0)
        z1 = tl.sum(tl.exp(q - mx1), 0)
        mx2 = tl.max(-q, 0)
        z2 = tl.sum(tl.exp(-q - mx2), 0)
        num = tl.zeros([D], tl.float32)
        den = tl.zeros([], tl.float32)
        for p in tl.static_range(NPARTS):
            for f0 in range(0, D, BLOCK_F):
                if PHI_PRE:
                    ph = tl.load(PHIQ + (b * Hq + hq) * F + p * D + f0 + offs_f).to(tl.float32)
                else:
                    qb = tl.load(qp + f0 + offs_f).to(tl.float32)
                    if PHI == 0:
                        if p == 0:
                            ph = tl.maximum((tl.exp(qb - mx1) / z1).to(DT).to(tl.float32), eps_r)
                        else:
                            ph = tl.maximum((tl.exp(-qb - mx2) / z2).to(DT).to(tl.float32), eps_r)
                    elif PHI == 1:
                        ph = (tl.where(qb > 0, qb, tl.exp(qb) - 1.0).to(DT).to(tl.float32) + 1.0).to(DT).to(tl.float32)
                    else:
                        ph = tl.maximum(qb, 0.0)
                hblk = tl.load(hbase + (p * D + f0 + offs_f[:, None]) * D + offs_d[None, :])
                num += tl.sum(ph[:, None] * hblk, 0)
                den += tl.sum(ph * tl.load(sbase + p * D + f0 + offs_f), 0)
        fac = tl.load(FAC + hq).to(tl.float32)
        g = 1.0 / (1.0 + tl.exp(-fac))
        if COMBINE == 3:  # calibrated: m_i is the max logit in log2 units
            w = tl.exp(tl.minimum(fac - m_i * 0.6931471805599453, 80.0))  # ln 2
            y = (acc + w * num) / (l_i + w * den + eps)
        elif COMBINE == 1:  # lolcats
            y = (g * acc + num) / (g * l_i + den + eps)
        elif COMBINE == 2:  # normalized
            y = g * (acc / l_i) + (1.0 - g) * (num / (den + eps))
        else:  # gated
            y = (g * acc + (1.0 - g) * num) / (g * l_i + (1.0 - g) * den + eps)
    else:
        y = acc / l_i
    tl.store(Out + b * so_b + hq * so_h + offs_d, y.to(Out.dtype.element_ty))


def _nonempty(x: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """An empty view may point one past its allocation; give the kernel a valid (never read) pointer instead."""
    return x if x.numel() else fallback


def decode_attention(q: torch.Tensor, state: LolaState, params: LolaParams, out: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """Attention output (B, Hq, 1, d) for one query per head over ``state`` (whose window already holds
    the query's own key). Reads the state only; no host sync, so it can be captured in a CUDA graph."""
    b, hq, _, d = q.shape
    fdim = params.feature_dim
    if out is None:
        out = alloc(q.shape, q.dtype, q.device)
    q = q if q.stride(-1) == 1 else q.contiguous()
    spk, spv = state.sp_k, state.sp_v
    wk, wv = state.win_k, state.win_v
    spk, spv = _nonempty(spk, wk), _nonempty(spv, wv)
    learned = params.cfg.feature_map == "hedgehog"
    has_lin = state.n_folded > 0
    phiq = params.feature_map_q(q).contiguous() if (has_lin and learned) else state.s
    fac = params.window_factors.detach()
    _decode_kernel[(b * hq,)](
        q, q.stride(0), q.stride(1),
        spk, spv, spk.stride(0), spk.stride(1), spk.stride(2), state.sp_k.shape[2],
        wk, wv, wk.stride(0), wk.stride(1), wk.stride(2), wk.shape[2],
        state.H, state.s, phiq,
        fac, out, out.stride(0), out.stride(1),
        hq, (d ** -0.5) * math.log2(math.e), rounded_eps(feature_eps(params), q.dtype), float(params.cfg.eps),
        GROUP=params.group, D=d, NPARTS=fdim // d, PHI=PHI_CODES[params.cfg.feature_map], PHI_PRE=learned,
        HAS_LIN=has_lin, COMBINE=COMBINE_CODES[params.cfg.combine],
        BLOCK_N=64 if d <= 64 else 32, BLOCK_F=min(32, d), num_warps=4 if d <= 64 else 8,
    )
    return out
