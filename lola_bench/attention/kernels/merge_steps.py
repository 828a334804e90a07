"""Step-parallel chunk-boundary merge (``$LOLA_MERGE=stepwise``): the work of ``merge._merge_kernel`` spread over
many programs, one short launch sequence per chunk step.

The persistent merge kernel runs one program per (batch, storage head) through every step: 8 programs for a
Llama-3 layer at batch 1, so each step costs a single SM's latency. Here each step of the schedule (rows of
``prefill.build_schedule``, known on the host) is up to three launches:

  a. ``_score_kernel``   (B * Hs, GROUP, candidate tiles): the SRE error of each candidate against the current
                         (H, s) for one query head of the group, written to scratch (only when 0 < keep < n and
                         the scorer is SRE; precomputed scorers are read by b directly);
  b. ``_select_kernel``  (B * Hs,): the mean over the group (summed in the persistent kernel's order), pinned sinks,
                         the register-resident selection ``_jit.threshold_select`` (split_topk's tie rule) and the
                         two compactions: the step's sparse index list and the list of pairs to fold;
  c. ``_fold_kernel``    (B * Hq, head_dim / BLOCK_DV): folds the dropped pairs into one value tile of H (and, tile
                         0 only, into s), then reads the step's queries out against the new state in registers:
                         phi(q)^T H (its tile) and phi(q)^T s (tile 0).

The same arithmetic in the same order as the persistent kernel (same tiles, same dot shapes), so both select the
same pairs and give the same state up to nothing but scheduling. Launch parameters depend on the schedule only, so
on CUDA the whole step loop is captured once per (schedule, shapes, configuration) in a CUDA graph and replayed
(inputs copied into the graph's buffers, outputs copied out); ``stepwise-eager``, the interpreter, or a capture that
fails launch eagerly. The default merge stays ``persistent`` until a GPU run has timed this one (gpu_bench rows
``merge_us_per_step``); the LoLA implementation name says which merge ran (``_host.merge_label``).
"""

from __future__ import annotations

import collections
import warnings

import torch
import triton
import triton.language as tl

from ..common import LolaParams
from ..state import LolaState
from ._host import (
    PHI_CODES,
    alloc,
    block_sizes,
    feature_eps,
    fp32_dot_precision,
    learned_weights,
    merge_mode,
    rounded_eps,
)
from ._jit import candidates, feature_parts, sre_tile, store_split, threshold_select


@triton.jit(do_not_specialize=["t", "spi_t", "LAM", "cand_cap"])
def _score_kernel(
    KU, VU, su_b, su_h, su_n, SCHED, t, SPI, spi_t, LAM, WK, H, S, SCR, cand_cap, Hs, Hq, eps_r, eps,
    GROUP: tl.constexpr, D: tl.constexpr, NPARTS: tl.constexpr, PHI: tl.constexpr, LEARNED: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_DV: tl.constexpr, PREC: tl.constexpr,
):
    pid = tl.program_id(0)  # b * Hs + hs
    g = tl.program_id(1)
    j0 = tl.program_id(2) * BLOCK_N
    b = pid // Hs
    hs = pid % Hs
    F: tl.constexpr = NPARTS * D
    row = SCHED + t * 9  # SCHED_FIELDS
    ns = tl.load(row + 0)
    ev_lo = tl.load(row + 1)
    n = ns + tl.load(row + 2)
    if j0 < n:
        offs_d = tl.arange(0, D)
        offs_dv = tl.arange(0, BLOCK_DV)
        rows = j0 + tl.arange(0, BLOCK_N)
        rmask = rows < n
        spi_in = SPI + t * spi_t + pid * LAM
        cu = tl.where(rows < ns, tl.load(spi_in + rows, mask=rows < ns, other=0), ev_lo + rows - ns)
        cu = tl.where(rmask, cu, 0)
        x = tl.load(KU + b * su_b + hs * su_h + cu[:, None] * su_n + offs_d[None, :], mask=rmask[:, None], other=0.0)
        hq = hs * GROUP + g
        p1, p2 = feature_parts(x, WK + hq * D * D, offs_d, eps_r, PHI, LEARNED, D, PREC)
        err = sre_tile(p1, p2, H + (b * Hq + hq) * F * D, S + (b * Hq + hq) * F,
                       VU + b * su_b + hs * su_h + cu[:, None] * su_n, rmask, eps, offs_d, offs_dv, NPARTS, D,
                       BLOCK_DV, PREC, BLOCK_N)
        tl.store(SCR + (pid * GROUP + g) * cand_cap + rows, err, mask=rmask)


@triton.jit(do_not_specialize=["t", "spi_t", "LAM", "cand_cap", "sinks"])
def _select_kernel(
    SCR, PSC, sp_b, sp_h, PU, pu_b, pu_h, sinks, SCHED, t, SPI, spi_t, LAM, OUTL, cand_cap, Hs,
    GROUP: tl.constexpr, SCORE_MODE: tl.constexpr, NPAD: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // Hs
    hs = pid % Hs
    row = SCHED + t * 9  # SCHED_FIELDS
    ns = tl.load(row + 0)
    ev_lo = tl.load(row + 1)
    keep = tl.load(row + 3)
    n = ns + tl.load(row + 2)
    spi_in = SPI + t * spi_t + pid * LAM
    c_rows, c_mask, c_cu = candidates(spi_in, ns, ev_lo, n, NPAD)
    if keep >= n:
        c_kept = c_mask
    elif keep == 0:
        c_kept = c_rows < 0
    else:
        if SCORE_MODE == 0:
            err = tl.zeros([NPAD], dtype=tl.float32)
            for g in range(GROUP):  # the persistent kernel's order of summation
                err += tl.load(SCR + (pid * GROUP + g) * cand_cap + c_rows, mask=c_mask, other=0.0)
            sc = err / GROUP
        else:
            sc = tl.load(PSC + b * sp_b + hs * sp_h + tl.where(c_mask, c_cu, 0), mask=c_mask, other=0.0)
        if sinks > 0:  # pinned sinks outrank every scored candidate (ties among them: earlier first)
            cpos = tl.load(PU + b * pu_b + hs * pu_h + tl.where(c_mask, c_cu, 0), mask=c_mask, other=0)
            sc = tl.where(cpos < sinks, float("inf"), sc)
        c_kept = threshold_select(sc, c_mask, keep)
    store_split(c_kept, c_rows, c_mask, c_cu, spi_in + spi_t, OUTL + pid * cand_cap)


@triton.jit(do_not_specialize=["t", "cand_cap", "L"])
def _fold_kernel(
    KU, VU, su_b, su_h, su_n, Q, sq_b, sq_h, sq_l, WK, WQ, H, S, SCHED, t, OUTL, cand_cap, LN, LD,
    Hs, Hq, L, eps_r,
    GROUP: tl.constexpr, D: tl.constexpr, NPARTS: tl.constexpr, PHI: tl.constexpr, LEARNED: tl.constexpr,
    READOUT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DV: tl.constexpr, PREC: tl.constexpr,
):
    pid = tl.program_id(0)  # b * Hq + hq
    dv0 = tl.program_id(1) * BLOCK_DV
    b = pid // Hq
    hq = pid % Hq
    hs = hq // GROUP
    F: tl.constexpr = NPARTS * D
    offs_d = tl.arange(0, D)
    offs_dv = tl.arange(0, BLOCK_DV)
    row = SCHED + t * 9  # SCHED_FIELDS
    n_out = tl.load(row + 0) + tl.load(row + 2) - tl.load(row + 3)
    q0 = tl.load(row + 4)
    seg = tl.load(row + 5)
    has_lin = tl.load(row + 8)
    outl = OUTL + (b * Hs + hs) * cand_cap
    acc1 = tl.zeros([D, BLOCK_DV], dtype=tl.float32)
    acc2 = tl.zeros([D, BLOCK_DV], dtype=tl.float32)
    ssum1 = tl.zeros([D], dtype=tl.float32)
    ssum2 = tl.zeros([D], dtype=tl.float32)
    for j0 in range(0, n_out, BLOCK_N):
        rows = j0 + tl.arange(0, BLOCK_N)
        rmask = rows < n_out
        cu = tl.load(outl + rows, mask=rmask, other=0)
        x = tl.load(KU + b * su_b + hs * su_h + cu[:, None] * su_n + offs_d[None, :], mask=rmask[:, None], other=0.0)
        p1, p2 = feature_parts(x, WK + hq * D * D, offs_d, eps_r, PHI, LEARNED, D, PREC)
        p1 = tl.where(rmask[:, None], p1, 0.0)
        vv = tl.load(VU + b * su_b + hs * su_h + cu[:, None] * su_n + dv0 + offs_dv[None, :], mask=rmask[:, None],
                     other=0.0).to(tl.float32)
        acc1 += tl.dot(tl.trans(p1), vv, input_precision=PREC)
        ssum1 += tl.sum(p1, 0)
        if NPARTS == 2:
            p2 = tl.where(rmask[:, None], p2, 0.0)
            acc2 += tl.dot(tl.trans(p2), vv, input_precision=PREC)
            ssum2 += tl.sum(p2, 0)
    hbase = H + (b * Hq + hq) * F * D
    sbase = S + (b * Hq + hq) * F
    hp = hbase + offs_d[:, None] * D + dv0 + offs_dv[None, :]
    h1 = tl.load(hp) + acc1
    h2 = h1
    if NPARTS == 2:
        h2 = tl.load(hp + D * D) + acc2
    s1 = tl.load(sbase + offs_d) + ssum1  # only value tile 0 stores s and reads den out (no race on s)
    s2 = s1
    if NPARTS == 2:
        s2 = tl.load(sbase + D + offs_d) + ssum2
    if n_out > 0:
        tl.store(hp, h1)
        if NPARTS == 2:
            tl.store(hp + D * D, h2)
        if dv0 == 0:
            tl.store(sbase + offs_d, s1)
            if NPARTS == 2:
                tl.store(sbase + D + offs_d, s2)
    if READOUT:
        if has_lin != 0:
            for m0 in range(0, seg, BLOCK_N):
                rows = q0 + m0 + tl.arange(0, BLOCK_N)
                rmask = (m0 + tl.arange(0, BLOCK_N)) < seg
                x = tl.load(Q + b * sq_b + hq * sq_h + rows[:, None] * sq_l + offs_d[None, :], mask=rmask[:, None],
                            other=0.0)
                p1, p2 = feature_parts(x, WQ + hq * D * D, offs_d, eps_r, PHI, LEARNED, D, PREC)
                lbase = (b * Hq + hq) * L + rows
                if dv0 == 0:
                    den = tl.sum(p1 * s1[None, :], 1)
                    if NPARTS == 2:
                        den += tl.sum(p2 * s2[None, :], 1)
                    tl.store(LD + lbase, den, mask=rmask)
                num = tl.dot(p1, h1, input_precision=PREC)
                if NPARTS == 2:
                    num += tl.dot(p2, h2, input_precision=PREC)
                tl.store(LN + lbase[:, None] * D + dv0 + offs_dv[None, :], num, mask=rmask[:, None])


# ----------------------------------------------------------------------------------------------------------------
# host side

def _launches(a: dict, rows: tuple, c: dict) -> None:
    """Enqueue every step's launches on the buffers in ``a`` (no allocation, no host sync: capturable)."""
    ku, vu, q, spi = a["ku"], a["vu"], a["q"], a["spi"]
    sr = (ku, vu, ku.stride(0), ku.stride(1), ku.stride(2))
    bh_s, bh_q = c["b"] * c["hs"], c["b"] * c["hq"]
    fm = dict(GROUP=c["group"], D=c["d"], NPARTS=c["nparts"], PHI=c["phi"], LEARNED=c["learned"], PREC=c["prec"],
              BLOCK_N=c["BLOCK_N"], BLOCK_DV=c["BLOCK_DV"], num_warps=c["num_warps"])
    cap, lam = c["cap"], spi.shape[-1]
    for t, (ns, _lo, n_ev, keep, _q0, _seg, _wl, _wh, has_lin) in enumerate(rows):
        n = ns + n_ev
        if c["score_mode"] == 0 and 0 < keep < n:
            _score_kernel[(bh_s, c["group"], triton.cdiv(n, c["BLOCK_N"]))](
                *sr, a["sched"], t, spi, spi.stride(0), lam, a["wk"], a["H"], a["S"], a["scr"], cap, c["hs"], c["hq"],
                c["eps_r"], c["eps"], **fm)
        _select_kernel[(bh_s,)](
            a["scr"], a["psc"], a["psc"].stride(0), a["psc"].stride(1), a["pu"], a["pu"].stride(0), a["pu"].stride(1),
            c["sinks"], a["sched"], t, spi, spi.stride(0), lam, a["outl"], cap, c["hs"],
            GROUP=c["group"], SCORE_MODE=c["score_mode"], NPAD=c["npad"], num_warps=4)
        if n - keep > 0 or (c["readout"] and has_lin):
            _fold_kernel[(bh_q, c["d"] // c["BLOCK_DV"])](
                *sr, q, q.stride(0), q.stride(1), q.stride(2), a["wk"], a["wq"], a["H"], a["S"], a["sched"], t,
                a["outl"], cap, a["ln"], a["ld"], c["hs"], c["hq"], c["L"], c["eps_r"], READOUT=c["readout"], **fm)


_GRAPHS: collections.OrderedDict = collections.OrderedDict()  # key -> (graph, static buffers) or None (no capture)
GRAPH_CACHE = 2  # graphs kept (each holds copies of its inputs and outputs; the layers of a prefill share one)


def clear_graphs() -> None:
    """Drop the cached graphs and their buffers (each holds copies of its call's inputs and outputs)."""
    _GRAPHS.clear()


def _sig(x: torch.Tensor) -> tuple:
    return (tuple(x.shape), x.stride(), x.dtype)


def _graphed(a: dict, rows: tuple, c: dict, outputs: tuple) -> bool:
    """Run the step loop as a CUDA graph (captured on first use of a key; the first call runs eagerly on the graph's
    buffers). Copies the inputs in and ``outputs`` back out. False when capture failed once for this key."""
    key = (rows, tuple(sorted((k, _sig(v)) for k, v in a.items())), tuple(sorted(c.items())), a["ku"].device)
    entry = _GRAPHS.get(key, "new")
    if entry is None:
        return False
    if entry == "new":
        static = {k: v.clone() for k, v in a.items()}
        _launches(static, rows, c)          # compiles; results valid for this call
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                _launches(static, rows, c)
        except Exception as e:  # noqa: BLE001 - any capture problem: run this key eagerly from now on
            first = (str(e).strip().splitlines() or [""])[0][:200]
            warnings.warn(f"stepwise merge: CUDA graph capture failed, launching eagerly ({type(e).__name__}: {first})",
                          stacklevel=3)
            _GRAPHS[key] = None
            for name in outputs:
                a[name].copy_(static[name])
            return True
        _GRAPHS[key] = (graph, static)
        while len(_GRAPHS) > GRAPH_CACHE:
            _GRAPHS.popitem(last=False)
    else:
        graph, static = entry
        _GRAPHS.move_to_end(key)
        for name, x in a.items():
            if name not in ("scr", "outl"):  # scratch: written before it is read in every step
                static[name].copy_(x)
        graph.replay()
    for name in outputs:
        a[name].copy_(static[name])
    return True


def launch_merge_steps(params: LolaParams, state: LolaState, ku: torch.Tensor, vu: torch.Tensor, pu: torch.Tensor,
                       sched: torch.Tensor, rows: tuple, spi: torch.Tensor, cand_cap: int, *,
                       q: torch.Tensor | None = None, ln: torch.Tensor | None = None, ld: torch.Tensor | None = None,
                       need_scores: bool = True) -> None:
    """``merge.launch_merge``'s contract with the host-side schedule ``rows`` (tuples of ``prefill.build_schedule``):
    updates state.H, state.s in place, fills spi[1:]; with ``q`` also writes the linear readout into ``ln``/``ld``."""
    from .merge import precomputed_scores

    b, hs, _, d = ku.shape
    dev, dt = ku.device, ku.dtype
    learned = params.cfg.feature_map == "hedgehog"
    tiles = block_sizes(d, dt, learned)
    cap = max(cand_cap, 1)
    c = dict(b=b, hs=hs, hq=params.num_heads, group=params.group, d=d, nparts=params.feature_dim // d,
             phi=PHI_CODES[params.cfg.feature_map], learned=learned, prec=fp32_dot_precision(dt),
             score_mode=0 if params.cfg.scorer == "sre" else 1, readout=q is not None, cap=cap,
             npad=triton.next_power_of_2(max(cap, 16)), sinks=int(params.cfg.sinks),
             L=q.shape[2] if q is not None else 1, eps_r=rounded_eps(feature_eps(params), dt),
             eps=float(params.cfg.eps), **{k: tiles[k] for k in ("BLOCK_N", "BLOCK_DV", "num_warps")})
    dummy = torch.zeros(1, dtype=torch.float32, device=dev)
    wk, wq = learned_weights(params, dt, dev)
    psc = (precomputed_scores(params, ku, vu, pu, state) if c["score_mode"] == 1 and need_scores
           else torch.zeros(1, 1, 1, dtype=torch.float32, device=dev))
    a = dict(ku=ku, vu=vu, pu=pu, q=q if q is not None else ku, wk=wk, wq=wq, H=state.H, S=state.s, sched=sched,
             spi=spi, psc=psc, ln=ln if q is not None else dummy, ld=ld if q is not None else dummy,
             scr=alloc((b * hs * c["group"], cap) if c["score_mode"] == 0 else (1,), torch.float32, dev),
             outl=alloc((b * hs, cap), torch.int32, dev))
    if dev.type == "cuda" and merge_mode() == "stepwise" and not torch.cuda.is_current_stream_capturing():
        if _graphed(a, rows, c, ("H", "S", "spi", "ln", "ld") if q is not None else ("H", "S", "spi")):
            return
    _launches(a, rows, c)
