"""Decode: one new token, sparse + window softmax and the linear readout, in two launches (split-K).

``_partial_kernel``: one program per (batch, query head, block of SPLIT keys of [sparse | window]) computes
the block's softmax partials (max logit, exp sum, exp-weighted value sum; fp32). ``_decode_kernel``: one
program per (batch, query head) merges the partials (exact max over all keys, so the combine sees the same
max-normalised sums as ``common.attend``), reads phi(q)^T H and phi(q)^T s out of the linear state and
applies the combine (gated / lolcats / normalized / calibrated, ``common.mix``) with the head's window
factor. With nothing folded yet (``state.n_folded == 0``) it is exact softmax attention. The split keeps
every program to one tile of keys: a single program per head walking lambda + window keys serially was
latency-bound (about 25 us per layer on an H200, results/perf).

phi(q) is computed in-kernel for every supported feature map, learned hedgehog included (h = q W_q for the
head, then the two-sided softmax). The chunk-boundary eviction that precedes the attention (every ``chunk``
tokens) runs in the merge kernel (merge.py) with torch bookkeeping; appending the new pair is a torch ``cat``.

``static_decode_attention`` launches the same two kernels over a ``StaticLolaState`` (static_decode.py) with the
lengths and "anything folded" read from the state's device tensors (DEV_LEN, DEV_LIN) and a grid fixed by its
capacities, so the launches are the same at every position and a CUDA graph can replay them.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..common import LolaParams
from ..state import LolaState
from ..static_decode import StaticLolaState
from ._host import COMBINE_CODES, PHI_CODES, alloc, feature_eps, learned_weights, rounded_eps

SPLIT = 64  # keys per program of the partial kernel (split-K over [sparse | window], flash-decoding style)


@triton.jit(do_not_specialize=["ns", "nw", "n_splits"])
def _partial_kernel(
    Q, sq_b, sq_h,                              # (B, Hq, 1, D)
    SPK, SPV, ssp_b, ssp_h, ssp_n, ns,          # sparse cache (B, Hs, ns, D)
    WK, WV, sw_b, sw_h, sw_n, nw,               # window (B, Hs, nw, D)
    PART, n_splits,                             # partials (B * Hq, n_splits, D + 2) fp32: acc, max, sum
    Hq, qk_scale,
    LENS,                                       # DEV_LEN: int64 [pos, win_start, sp_n] (ns, nw unused)
    GROUP: tl.constexpr, D: tl.constexpr, SPLIT: tl.constexpr, DEV_LEN: tl.constexpr,
):
    """Softmax partials of one query head over keys [sp * SPLIT, (sp + 1) * SPLIT) of [sparse | window].
    DEV_LEN (a static state): ns = sp_n and nw = pos - win_start + 1 (the new pair written, pos not yet advanced)
    come from device memory, so the launch is the same at every position."""
    pid = tl.program_id(0)
    sp = tl.program_id(1)
    b = pid // Hq
    hq = pid % Hq
    hs = hq // GROUP
    if DEV_LEN:
        ns = tl.load(LENS + 2).to(tl.int32)
        nw = (tl.load(LENS) - tl.load(LENS + 1) + 1).to(tl.int32)
    offs_d = tl.arange(0, D)
    q = tl.load(Q + b * sq_b + hq * sq_h + offs_d).to(tl.float32)
    j = sp * SPLIT + tl.arange(0, SPLIT)
    in_sp = j < ns
    in_w = (j >= ns) & (j < ns + nw)
    jw = j - ns
    sp_off = b * ssp_b + hs * ssp_h + j[:, None] * ssp_n + offs_d[None, :]
    w_off = b * sw_b + hs * sw_h + jw[:, None] * sw_n + offs_d[None, :]
    k = tl.where(in_sp[:, None], tl.load(SPK + sp_off, mask=in_sp[:, None], other=0.0),
                 tl.load(WK + w_off, mask=in_w[:, None], other=0.0)).to(tl.float32)
    v = tl.where(in_sp[:, None], tl.load(SPV + sp_off, mask=in_sp[:, None], other=0.0),
                 tl.load(WV + w_off, mask=in_w[:, None], other=0.0)).to(tl.float32)
    sc = tl.sum(q[None, :] * k, 1) * qk_scale                 # log2 units
    sc = tl.where(in_sp | in_w, sc, float("-inf"))
    m = tl.max(sc, 0)             # -inf only for a split past the last key (a static grid covers the capacity):
    p = tl.exp2(sc - tl.where(m > float("-inf"), m, 0.0))      # then p = 0, and the merge gives it weight 0
    base = PART + (pid * n_splits + sp) * (D + 2)
    tl.store(base + offs_d, tl.sum(p[:, None] * v, 0))
    tl.store(base + D, m)
    tl.store(base + D + 1, tl.sum(p, 0))


@triton.jit(do_not_specialize=["n_splits"])
def _decode_kernel(
    Q, sq_b, sq_h,                              # (B, Hq, 1, D)
    PART, n_splits,                             # softmax partials from _partial_kernel
    H, S, WQ,                                   # (B, Hq, F, D), (B, Hq, F) fp32; hedgehog W_q (Hq, D, D) (LEARNED)
    FAC, Out, so_b, so_h,                         # window factor logits (Hq,), out (B, Hq, 1, D)
    Hq, eps_r, eps,
    LINF,                                       # DEV_LIN: uint8 (1,), nonzero once anything was folded
    D: tl.constexpr, NPARTS: tl.constexpr, PHI: tl.constexpr, LEARNED: tl.constexpr,
    HAS_LIN: tl.constexpr, COMBINE: tl.constexpr, NSP: tl.constexpr, DEV_LIN: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // Hq
    hq = pid % Hq
    F: tl.constexpr = NPARTS * D
    DT: tl.constexpr = Q.dtype.element_ty
    offs_d = tl.arange(0, D)
    q = tl.load(Q + b * sq_b + hq * sq_h + offs_d).to(tl.float32)
    # merge the splits: exact max over all keys, sums rescaled to it (as one online softmax would leave them)
    offs_s = tl.arange(0, NSP)
    smask = offs_s < n_splits
    pb = PART + pid * n_splits * (D + 2) + offs_s * (D + 2)
    ms = tl.load(pb + D, mask=smask, other=float("-inf"))
    m_i = tl.max(ms, 0)
    w_s = tl.where(smask, tl.exp2(ms - m_i), 0.0)
    l_i = tl.sum(w_s * tl.load(pb + D + 1, mask=smask, other=0.0), 0)
    acc = tl.sum(w_s[:, None] * tl.load(pb[:, None] + offs_d[None, :], mask=smask[:, None], other=0.0), 0)
    if HAS_LIN:
        # phi(q) over the whole row: h = q @ W_q (learned hedgehog, rounded to the model dtype like torch's
        # einsum) or q itself, then the feature map, then phi(q)^T H and phi(q)^T s one part (D rows) at a time
        hbase = H + (b * Hq + hq) * F * D
        sbase = S + (b * Hq + hq) * F
        if LEARNED:
            w = tl.load(WQ + hq * D * D + offs_d[:, None] * D + offs_d[None, :]).to(tl.float32)
            h = tl.sum(q[:, None] * w, 0).to(DT).to(tl.float32)
        else:
            h = q
        if PHI == 0:
            e1 = tl.exp(h - tl.max(h, 0))
            ph1 = tl.maximum((e1 / tl.sum(e1, 0)).to(DT).to(tl.float32), eps_r)
            e2 = tl.exp(-h - tl.max(-h, 0))
            ph2 = tl.maximum((e2 / tl.sum(e2, 0)).to(DT).to(tl.float32), eps_r)
        elif PHI == 1:
            ph1 = (tl.where(h > 0, h, tl.exp(h) - 1.0).to(DT).to(tl.float32) + 1.0).to(DT).to(tl.float32)
            ph2 = ph1
        else:
            ph1 = tl.maximum(h, 0.0)
            ph2 = ph1
        hp = hbase + offs_d[:, None] * D + offs_d[None, :]
        num = tl.sum(ph1[:, None] * tl.load(hp), 0)
        den = tl.sum(ph1 * tl.load(sbase + offs_d), 0)
        if NPARTS == 2:
            num += tl.sum(ph2[:, None] * tl.load(hp + D * D), 0)
            den += tl.sum(ph2 * tl.load(sbase + D + offs_d), 0)
        fac = tl.load(FAC + hq).to(tl.float32)
        g = 1.0 / (1.0 + tl.exp(-fac))
        if COMBINE == 3:  # calibrated: m_i is the max logit in log2 units
            w = tl.exp(tl.minimum(fac - m_i * 0.6931471805599453, 80.0))  # ln 2
            y = (acc + w * num) / (l_i * (1.0 + eps) + w * den)
        elif COMBINE == 4:  # lola (the authors' formula, common.mix): weight e^(-f-m), eps*e^-m/g
            m_e = m_i * 0.6931471805599453
            w = tl.exp(tl.minimum(-fac - m_e, 80.0))
            eps_m = eps * tl.exp(tl.minimum(-m_e, 80.0)) * (1.0 + tl.exp(-fac))
            y = (acc + w * num) / (l_i + w * den + eps_m)
        elif COMBINE == 1:  # lolcats
            y = (g * acc + num) / (g * l_i + den + eps)
        elif COMBINE == 2:  # normalized
            y = g * (acc / l_i) + (1.0 - g) * (num / (den + eps))
        else:  # gated
            y = (g * acc + (1.0 - g) * num) / (g * l_i + (1.0 - g) * den + eps)
        if DEV_LIN:  # a static state: the readout always computed, used once something was folded
            y = tl.where(tl.load(LINF) != 0, y, acc / l_i)
    else:
        y = acc / l_i
    tl.store(Out + b * so_b + hq * so_h + offs_d, y.to(Out.dtype.element_ty))


def _nonempty(x: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """An empty view may point one past its allocation; give the kernel a valid (never read) pointer instead."""
    return x if x.numel() else fallback


def decode_attention(q: torch.Tensor, state: LolaState, params: LolaParams, out: torch.Tensor | None = None
                     ) -> torch.Tensor:
    """Attention output (B, Hq, 1, d) for one query per head over ``state`` (whose window already holds
    the query's own key). Reads the state only; no host sync. The lengths and whether anything was folded are
    launch arguments (host bookkeeping), so a captured launch holds for one position only."""
    spk, spv = _nonempty(state.sp_k, state.win_k), _nonempty(state.sp_v, state.win_v)
    nk = state.sp_k.shape[2] + state.win_k.shape[2]
    return _launch(q, params, (spk, spv, state.sp_k.shape[2]), (state.win_k, state.win_v, state.win_k.shape[2]),
                   state.H, state.s, triton.cdiv(nk, SPLIT), state.n_folded > 0, None, None, out)


def static_decode_attention(q: torch.Tensor, st: StaticLolaState, out: torch.Tensor | None = None) -> torch.Tensor:
    """``decode_attention`` over a ``StaticLolaState`` (static_decode.py: the new pair written, ``pos`` not yet
    advanced), capturable in a CUDA graph: the grid is fixed by the capacities (splits past the last live key
    contribute nothing), the kernels read sp_n, pos - win_start and has_lin from the state's device tensors, and
    the keys / values come from its one slot buffer (sparse slots first, the window from slot cap_s)."""
    k, v, cs = st.k, st.v, st.cap_s
    return _launch(q, st.params, (k, v, 0), (k[:, :, cs:], v[:, :, cs:], 0), st.H, st.s,
                   triton.cdiv(cs + st.cap_w, SPLIT), True, st.counts, st.has_lin.view(torch.uint8), out)


def _launch(q, params: LolaParams, sparse, window, H, S, n_splits: int, has_lin: bool, lens, linf, out):
    """Both launches. ``sparse`` / ``window``: (K, V, length) with K, V (B, Hs, n, d) of equal strides;
    ``lens`` / ``linf``: the device counts and flag of a static state (then the lengths given are unused)."""
    b, hq, _, d = q.shape
    if out is None:
        out = alloc(q.shape, q.dtype, q.device)
    q = q if q.stride(-1) == 1 else q.contiguous()
    (spk, spv, ns), (wk, wv, nw) = sparse, window
    learned = params.cfg.feature_map == "hedgehog"
    wq = learned_weights(params, q.dtype, q.device)[1] if (has_lin and learned) else S
    part = alloc((b * hq, n_splits, d + 2), torch.float32, q.device)
    warps = 4 if d <= 64 else 8
    _partial_kernel[(b * hq, n_splits)](
        q, q.stride(0), q.stride(1),
        spk, spv, spk.stride(0), spk.stride(1), spk.stride(2), ns,
        wk, wv, wk.stride(0), wk.stride(1), wk.stride(2), nw,
        part, n_splits, hq, (d ** -0.5) * math.log2(math.e), part if lens is None else lens,
        GROUP=params.group, D=d, SPLIT=SPLIT, DEV_LEN=lens is not None, num_warps=warps,
    )
    _decode_kernel[(b * hq,)](
        q, q.stride(0), q.stride(1),
        part, n_splits,
        H, S, wq,
        params.window_factors.detach(), out, out.stride(0), out.stride(1),
        hq, rounded_eps(feature_eps(params), q.dtype), float(params.cfg.eps), part if linf is None else linf,
        D=d, NPARTS=params.feature_dim // d, PHI=PHI_CODES[params.cfg.feature_map], LEARNED=learned,
        HAS_LIN=has_lin, COMBINE=COMBINE_CODES[params.cfg.combine], NSP=max(2, triton.next_power_of_2(n_splits)),
        DEV_LIN=linf is not None, num_warps=warps,
    )
    return out
