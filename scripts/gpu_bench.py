#!/usr/bin/env python
"""One-call GPU benchmark of the LoLA Triton kernels (how to run: scripts/README.md).

Sections, in this order (results are written after each one, so a run cut short keeps what it did; items
that would overrun --budget-s are recorded as skipped):
  correctness       each kernel against the torch path / the quadratic reference on the same device
                    (bf16 on a GPU, plus float32 where the torch fast path can run)
  decode_attention  attention-side decode us/token for 16 layers of the llama-3.2-1b shape at 4K/32K/128K
                    contexts, from synthetic LolaStates of the right size: LoLA full step (eager: append +
                    chunk-boundary merge + kernel), LoLA kernel alone (eager and CUDA graph), the torch
                    ``attend`` (eager), and full attention over a KV cache of the context (SDPA, eager, graph)
  merge_tiles       the merge kernel (phase A of a lambda > 0 prefill) per tile setting ($LOLA_MERGE_TILES)
  ttft              time to first token of the whole random-weight model (llama-3.2-1b, llama-3.1-8b, bf16):
                    full attention (SDPA, cuDNN backend when it runs; the backend that ran is recorded) vs
                    LoLA (window 64, lambda 0 and 512) through the Triton kernels; peak VRAM per run
  decode_model      whole-model decode ms/token continuing the TTFT prompt (4K and 32K)
Writes <out>/<device>.json and <out>/<device>.md with provenance.

``--smoke`` runs every section with tiny shapes (CPU, float32; Triton through TRITON_INTERPRET=1, or the
torch path when Triton cannot run) so the script itself can be tested without a GPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import statistics
import sys
import time
import traceback
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from lola_bench.attention import kernels as K  # noqa: E402
from lola_bench.attention.chunked import lola_chunked  # noqa: E402
from lola_bench.attention.common import LolaParams, append_window, attend  # noqa: E402
from lola_bench.attention.config import LolaConfig  # noqa: E402
from lola_bench.attention.decode import lola_decode  # noqa: E402
from lola_bench.attention.feature_maps import make_feature_map  # noqa: E402
from lola_bench.attention.reference import lola_reference  # noqa: E402
from lola_bench.attention.scorers import make_scorer  # noqa: E402
from lola_bench.attention.state import LolaState  # noqa: E402
from lola_bench.models import patch as lola_patch  # noqa: E402
from lola_bench.models.loading import RANDOM_PRESETS, random_model  # noqa: E402
from lola_bench.provenance import provenance  # noqa: E402

MIB = 1024 * 1024
FULL = dict(presets=["llama-3.2-1b", "llama-3.1-8b"], ttft_ctx=[4096, 8192, 16384, 32768], lambdas=[0, 512],
            window=64, decode_ctx=[4096, 32768, 131072], decode_preset="llama-3.2-1b", decode_layers=16,
            model_decode_ctx=[4096, 32768], model_decode_tokens=32, reps=3, corr_len=1000, corr_sparse=128,
            corr_decode_steps=80, dtype=torch.bfloat16,
            # tile settings of the merge kernel to time; by --compile-check (sm_90, bf16, d 64) the first three use
            # 174-249 registers without spills, the last two spill 120-272 bytes
            merge_tiles=["", "BLOCK_N=32", "BLOCK_N=32,BLOCK_DV=64,num_warps=4", "BLOCK_DV=64", "num_warps=4"],
            # merge selection checks (lambda, LOLA_MERGE_SELECT, num_warps): register vectors of 128 to 2048
            # candidates, and 2064 (beyond SELECT_MAX_NPAD: rank counting)
            selection_cases=[(8, "threshold", 4), (8, "threshold", 8), (100, "threshold", 8), (512, "threshold", 4),
                             (512, "threshold", 8), (512, "rank", 8), (1900, "threshold", 8), (2000, "threshold", 8)])
SMOKE = dict(presets=["tiny"], ttft_ctx=[40], lambdas=[0, 8], window=8, decode_ctx=[64], decode_preset="tiny",
             decode_layers=2, model_decode_ctx=[40], model_decode_tokens=3, reps=1, corr_len=45, corr_sparse=8,
             corr_decode_steps=10, dtype=torch.float32, merge_tiles=["", "BLOCK_N=16,num_warps=4"],
             selection_cases=[(8, "threshold", 4), (8, "rank", 8)])


# ---------------------------------------------------------------------------------------------------------------
# timing

class Clock:
    """Wall-clock budget of the whole run."""

    def __init__(self, budget_s: float):
        self.t0 = time.perf_counter()
        self.budget = budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget - self.elapsed()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def host_times(fn, device: str, warmup: int = 1, reps: int = 3) -> list[float]:
    """Seconds per call, synchronized before and after each call, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def bench_us(fn, device: str) -> float:
    """Median microseconds per call: triton.testing.do_bench on CUDA (events, warm-up, L2 flushed before each
    call), synchronized host timing elsewhere."""
    if device == "cuda":
        from triton.testing import do_bench

        return 1000.0 * do_bench(fn, warmup=25, rep=200, return_mode="median")
    return 1e6 * statistics.median(host_times(fn, device, warmup=1, reps=3))


def bench_graph_us(fn, iters: int = 50) -> dict:
    """Capture ``fn`` in a CUDA graph; median us per replay with the L2 flushed before each replay (cold), and
    the mean over back-to-back replays (warm: state may stay in L2)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    torch.cuda.synchronize()
    flush = torch.empty(256 * MIB, dtype=torch.int8, device="cuda")
    cold = []
    for _ in range(iters):
        flush.zero_()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        g.replay()
        e1.record()
        torch.cuda.synchronize()
        cold.append(1000.0 * e0.elapsed_time(e1))
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(iters):
        g.replay()
    e1.record()
    torch.cuda.synchronize()
    return {"cold_us": statistics.median(cold), "warm_us": 1000.0 * e0.elapsed_time(e1) / iters}


def peak_reset(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mib(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / MIB, 1) if device == "cuda" else None


# ---------------------------------------------------------------------------------------------------------------
# helpers

def preset_shape(preset: str) -> dict:
    p = RANDOM_PRESETS[preset]
    return dict(hq=p["num_attention_heads"], hkv=p["num_key_value_heads"], d=p["head_dim"],
                layers=p["num_hidden_layers"])


def make_params(cfg: LolaConfig, hq: int, hkv: int, d: int, device: str) -> LolaParams:
    fq = make_feature_map(cfg.feature_map, hq, d).to(device)
    fk = make_feature_map(cfg.feature_map, hq, d).to(device)
    factors = torch.full((hq,), float(cfg.factor_init), device=device) + 0.5 * torch.randn(hq, device=device)
    return LolaParams(cfg, fq, fk, factors, make_scorer(cfg.scorer), hq, hkv, d)


def synthetic_state(p: LolaParams, ctx: int, dtype, device: str) -> LolaState:
    """The state of one layer after ``ctx`` tokens, sizes exactly as a prefill would leave them, random contents."""
    cfg = p.cfg
    ws = cfg.window_start((ctx - 1) // cfg.chunk_size)
    nw, ns = ctx - ws, min(cfg.sparse, ws)
    hs, hq, d, f = p.storage_heads, p.num_heads, p.head_dim, p.feature_dim
    st = LolaState()
    st.init(1, hs, hq, d, f, dtype, device, False)
    st.sp_k = torch.randn(1, hs, ns, d, device=device).to(dtype)
    st.sp_v = torch.randn(1, hs, ns, d, device=device).to(dtype)
    st.sp_pos = torch.randperm(max(ws, 1), device=device)[:ns].sort().values.view(1, 1, ns).expand(1, hs, ns).clone()
    st.win_k = torch.randn(1, hs, nw, d, device=device).to(dtype)
    st.win_v = torch.randn(1, hs, nw, d, device=device).to(dtype)
    st.win_pos = torch.arange(ws, ctx, device=device)
    st.H = torch.rand(1, hq, f, d, device=device) * 0.05
    st.s = torch.rand(1, hq, f, device=device) + 1.0
    st.pos, st.n_folded = ctx, ws - ns
    return st


def clone_state(st: LolaState) -> LolaState:
    c = copy.copy(st)
    for k, v in vars(st).items():
        if isinstance(v, torch.Tensor):
            setattr(c, k, v.clone())
    c.meta = dict(st.meta)
    return c


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean fraction of sparse positions shared per (batch, head)."""
    if a.shape[-1] == 0 and b.shape[-1] == 0:
        return 1.0
    fr = []
    for x, y in zip(a.reshape(-1, a.shape[-1]).tolist(), b.reshape(-1, b.shape[-1]).tolist()):
        fr.append(len(set(x) & set(y)) / max(len(y), 1))
    return float(sum(fr) / len(fr))


def kernels_on(device: str) -> bool:
    return K.kernels_available() and (device == "cuda" or K.interpreting())


def forward_kw(model) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


# ---------------------------------------------------------------------------------------------------------------
# sections

def section_correctness(cfgx: dict, device: str) -> list[dict]:
    """Kernels vs torch on this device, for the attention shape of every preset; the merge kernel's selection."""
    shapes = [cfgx["decode_preset"]] + [p for p in cfgx["presets"] if p != cfgx["decode_preset"]]
    out = []
    for preset in shapes:
        out += correctness_checks(preset, cfgx, device)
    return out + selection_checks(cfgx["selection_cases"], device)


def selection_checks(cases: list, device: str) -> list[dict]:
    """The merge kernel's top-lambda selection, compiled on this device (the interpreter tests cannot see compiled
    scan or layout bugs), against ``split_topk`` on tie-heavy scores with +-inf, +-0, subnormals and NaN: one chunk
    boundary per case (lambda, selection, num_warps), candidates = lambda + 64. rel_err = share of kept positions
    that differ."""
    from lola_bench.attention.common import leaving_count, split_topk
    from lola_bench.attention.kernels import merge as kmerge

    if not kernels_on(device):
        return []
    out, saved = [], kmerge.precomputed_scores
    gen = torch.Generator().manual_seed(3)
    vals = torch.tensor([float("-inf"), float("inf"), 0.0, -0.0, 1e-45, -1e-45, 1.0, 2.0, 3.0, float("nan")])
    try:
        for lam, select, warps in cases:
            p = make_params(LolaConfig(window=64, sparse=lam, scorer="random"), 4, 2, 64, device)
            ctx = 64 * (lam // 64 + 4)  # the sparse cache is full
            st = synthetic_state(p, ctx, torch.float32, device)
            ws = p.cfg.window_start(ctx // 64)
            n_ev = leaving_count(st, ws)
            n = st.sp_k.shape[2] + n_ev
            cand = torch.cat([st.sp_pos, st.win_pos[:n_ev].view(1, 1, -1).expand(1, p.storage_heads, -1)], 2)
            sc = vals[torch.randint(0, len(vals), (1, p.storage_heads, n), generator=gen)].to(device)
            kmerge.precomputed_scores = lambda *a, sc=sc, **kw: sc
            with set_env({"LOLA_MERGE_SELECT": select, "LOLA_MERGE_TILES": f"num_warps={warps}"}):
                kmerge.evict_before_triton(st, p, ws)
            want = cand.gather(2, split_topk(sc, min(lam, n))[0])
            bad = float((st.sp_pos != want).float().mean()) if st.sp_pos.shape == want.shape else 1.0
            mode, npad = kmerge.select_mode(n) if select == "threshold" else (0, 0)
            out.append({"check": f"merge_selection_{select}_n{n}_warps{warps}", "shape": "selection", "rel_err": bad,
                        "tol": 0.0, "ok": bad == 0.0, "register_vector": npad if mode else "rank counting"})
    finally:
        kmerge.precomputed_scores = saved
    return out


def correctness_checks(preset: str, cfgx: dict, device: str) -> list[dict]:
    """Relative L2 errors against the torch paths; each check lists its tolerance and extra agreement measures."""
    from lola_bench.attention.kernels.decode import decode_attention

    out = []
    dt, dname = cfgx["dtype"], str(cfgx["dtype"]).replace("torch.", "")
    sh = preset_shape(preset)
    hq, hkv, d, L = sh["hq"], sh["hkv"], sh["d"], cfgx["corr_len"]
    p = make_params(LolaConfig(window=cfgx["window"], sparse=cfgx["corr_sparse"]), hq, hkv, d, device)
    torch.manual_seed(1)

    def rand(h, n, dtype=torch.float32):
        return torch.randn(1, h, n, d, device=device).to(dtype)

    def add(name, err, tol, **extra):
        out.append({"check": name, "shape": preset, "rel_err": err, "tol": tol, "ok": bool(err <= tol), **extra})

    # prefill in the benchmark dtype vs the quadratic reference (which scores in float32 like the kernel)
    q, k, v = rand(hq, L), rand(hkv, L), rand(hkv, L)
    st = LolaState()
    got = K.lola_chunked_triton(q.to(dt), k.to(dt), v.to(dt), st, p)
    ref = lola_reference(q.to(dt), k.to(dt), v.to(dt), p)
    ov = overlap(st.sp_pos, ref.sparse_pos)
    add(f"prefill_{dname}_vs_reference", rel_err(got, ref.out), 1e-4 if dt == torch.float32 else 2e-2,
        sparse_overlap=ov, H_rel_err=rel_err(st.H, ref.H), nan=bool(got.isnan().any()))
    out[-1]["ok"] = out[-1]["ok"] and ov >= 0.95 and not out[-1]["nan"]
    # decode kernel on that state (one token appended) vs torch attend
    qd, kd, vd = rand(hq, 1, dt), rand(hkv, 1, dt), rand(hkv, 1, dt)
    append_window(st, p, kd, vd)
    want = attend(qd, st, p, st.pos - 1, causal=False)
    add(f"decode_kernel_{dname}_vs_attend", rel_err(decode_attention(qd, st, p), want),
        1e-4 if dt == torch.float32 else 1e-2)
    # float32: prefill, then decode steps across chunk boundaries, vs the torch fast path (same selections)
    st_k, st_t = LolaState(), LolaState()
    got = K.lola_chunked_triton(q, k, v, st_k, p)
    want = lola_chunked(q, k, v, st_t, p)
    same = bool(torch.equal(st_k.sp_pos, st_t.sp_pos))
    add("prefill_fp32_vs_torch", rel_err(got, want), 1e-4, sparse_equal=same, H_rel_err=rel_err(st_k.H, st_t.H))
    out[-1]["ok"] = out[-1]["ok"] and same and out[-1]["H_rel_err"] < 1e-4
    errs = []
    for _ in range(cfgx["corr_decode_steps"]):
        qd, kd, vd = rand(hq, 1), rand(hkv, 1), rand(hkv, 1)
        errs.append(rel_err(K.lola_decode_triton(qd, kd, vd, st_k, p), lola_decode(qd, kd, vd, st_t, p)))
    same = bool(torch.equal(st_k.sp_pos, st_t.sp_pos))
    add("decode_steps_fp32_vs_torch", max(errs), 1e-4, steps=len(errs), sparse_equal=same,
        H_rel_err=rel_err(st_k.H, st_t.H))
    out[-1]["ok"] = out[-1]["ok"] and same and out[-1]["H_rel_err"] < 1e-4
    return out


def section_decode_attention(cfgx: dict, device: str, clock: Clock) -> list[dict]:
    """Attention-side decode per token for ``decode_layers`` layers of the decode preset's shape."""
    sh = preset_shape(cfgx["decode_preset"])
    cfg = LolaConfig(window=cfgx["window"], sparse=max(cfgx["lambdas"]))
    p = make_params(cfg, sh["hq"], sh["hkv"], sh["d"], device)
    rows = []
    for ctx in cfgx["decode_ctx"]:
        if clock.left() < 30:
            rows.append({"ctx": ctx, "skipped": "time budget"})
        else:
            rows.append(decode_row(p, sh, ctx, cfgx["decode_layers"], cfgx["dtype"], device))
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


def decode_row(p: LolaParams, sh: dict, ctx: int, nl: int, dt, device: str) -> dict:
    """One context: LoLA (kernel eager / graph, full step, merge) and full attention over ``nl`` layers."""
    from lola_bench.attention.kernels.decode import decode_attention
    from lola_bench.attention.kernels.merge import evict_before_triton

    cfg = p.cfg
    r = {"ctx": ctx, "layers": nl, "lambda": cfg.sparse, "window": cfg.window}
    states = [synthetic_state(p, ctx, dt, device) for _ in range(nl)]
    r["state_mib_per_layer"] = round(sum(states[0].nbytes_by_tier().values()) / MIB, 3)
    qs = [torch.randn(1, sh["hq"], 1, sh["d"], device=device).to(dt) for _ in range(nl)]
    ks = [torch.randn(1, sh["hkv"], 1, sh["d"], device=device).to(dt) for _ in range(nl)]
    vs = [torch.randn(1, sh["hkv"], 1, sh["d"], device=device).to(dt) for _ in range(nl)]
    if kernels_on(device):
        outs = [torch.empty_like(x) for x in qs]

        def kernel_only():
            for i in range(nl):
                decode_attention(qs[i], states[i], p, out=outs[i])

        r["lola_kernel_eager_us"] = bench_us(kernel_only, device)
        if device == "cuda":
            g = bench_graph_us(kernel_only)
            r["lola_kernel_graph_us"], r["lola_kernel_graph_warm_us"] = g["cold_us"], g["warm_us"]
        # full steps (append + the merge at the chunk boundary + kernel) over one chunk of tokens, eager
        run = [clone_state(s) for s in states]
        for i in range(nl):  # warm-up / compile on throw-away copies
            K.lola_decode_triton(qs[i], ks[i], vs[i], clone_state(states[i]), p)
        n_tok = cfg.chunk_size
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n_tok):
            for i in range(nl):
                K.lola_decode_triton(qs[i], ks[i], vs[i], run[i], p)
        sync(device)
        r["lola_step_eager_us"] = 1e6 * (time.perf_counter() - t0) / n_tok
        # the chunk-boundary merge alone, per layer, and amortized per token over the chunk
        ws = cfg.window_start(ctx // cfg.chunk_size)  # the boundary that the token at position ctx starts
        for key, env in (("merge_us_per_layer", {}), ("merge_rank_select_us_per_layer", {"LOLA_MERGE_SELECT": "rank"})):
            merge = [clone_state(states[0]) for _ in range(4)]
            with set_env(env):
                evict_before_triton(merge[0], p, ws)  # compile
                ts = []
                for m in merge[1:]:
                    sync(device)
                    t0 = time.perf_counter()
                    evict_before_triton(m, p, ws)
                    sync(device)
                    ts.append(time.perf_counter() - t0)
            r[key] = 1e6 * statistics.median(ts)
        r["merge_amortized_us_per_token"] = r["merge_us_per_layer"] * nl / cfg.chunk_size
    r["torch_attend_eager_us"] = bench_us(lambda: [attend(qs[i], states[i], p, ctx - 1, causal=False)
                                                   for i in range(nl)], device)
    # full attention over a KV cache of ctx tokens
    kc = [torch.randn(1, sh["hkv"], ctx, sh["d"], device=device).to(dt) for _ in range(nl)]
    vc = [torch.randn(1, sh["hkv"], ctx, sh["d"], device=device).to(dt) for _ in range(nl)]
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def full_attn():
        for i in range(nl):
            sdpa(qs[i], kc[i], vc[i], enable_gqa=True)

    r["full_sdpa_eager_us"] = bench_us(full_attn, device)
    if device == "cuda":
        g = bench_graph_us(full_attn)
        r["full_sdpa_graph_us"], r["full_sdpa_graph_warm_us"] = g["cold_us"], g["warm_us"]
    return r


def section_prefill_attention(cfgx: dict, device: str, clock: Clock) -> list[dict]:
    """Attention-side prefill of one layer of the decode preset's shape, per phase: merge kernel (sequential over
    chunks, one program per batch x storage head), attention kernel (parallel), against causal SDPA."""
    rows = []
    for ctx in cfgx["ttft_ctx"]:
        if clock.left() < 40:
            rows.append({"ctx": ctx, "skipped": "time budget"})
        else:
            rows += prefill_rows(cfgx, device, ctx)
    return rows


def section_merge_tiles(cfgx: dict, device: str, clock: Clock) -> list[dict]:
    """Phase A (merge kernel) of one layer's prefill at the smallest TTFT context, lambda max, grouped, per tile
    setting (``$LOLA_MERGE_TILES``, see ``_host.block_sizes``): which tiles to ship is a GPU measurement. Each row also
    gives the largest output difference from the first setting: tiles change the summation order, hence rounding of
    H and the scores, which can flip near-tied selections at later chunks (so small, not zero, is expected)."""
    if not kernels_on(device):
        return [{"skipped": "Triton kernels not available"}]
    sh = preset_shape(cfgx["decode_preset"])
    ctx = min(cfgx["ttft_ctx"])
    q, k, v = random_qkv(sh, ctx, cfgx["dtype"], device)
    p = make_params(LolaConfig(window=cfgx["window"], sparse=max(cfgx["lambdas"])), sh["hq"], sh["hkv"], sh["d"],
                    device)
    rows, ref = [], None
    for spec in cfgx["merge_tiles"]:
        row = {"ctx": ctx, "lambda": max(cfgx["lambdas"]), "tiles": spec or "default"}
        if clock.left() < 60:
            rows.append({**row, "skipped": "time budget"})
            continue
        try:
            with set_env({"LOLA_MERGE_TILES": spec}):
                out, runs = timed_prefills(q, k, v, p, cfgx["reps"])
            row["merge_ms"] = statistics.median(r["merge"] for r in runs)
            ref = out if ref is None else ref
            row["max_abs_diff_vs_first"] = float((out.float() - ref.float()).abs().max())
        except Exception as e:  # noqa: BLE001 - a tile setting that fails to compile or spills is a result too
            row["error"] = f"{type(e).__name__}: {str(e)[-300:]}"
        rows.append(row)
        print(f"[merge_tiles] {row}", flush=True)
    return rows


def set_env(env: dict):
    """Environment variables set for the duration of a with-block (kernel options are read at launch time)."""
    return mock.patch.dict(os.environ, env)


def timed_prefills(q, k, v, p: LolaParams, reps: int) -> tuple[torch.Tensor, list[dict]]:
    """One warm-up prefill (compiles), then ``reps`` timed ones: (warm-up output, per-run phase times in ms)."""
    from lola_bench.attention.kernels.prefill import marks_ms, prefill

    out = prefill(q, k, v, LolaState(), p)
    runs = []
    for _ in range(reps):
        marks = []
        prefill(q, k, v, LolaState(), p, marks=marks)
        runs.append(marks_ms(marks))
    return out, runs


def random_qkv(sh: dict, ctx: int, dt, device: str):
    """Random q (Hq heads), k, v (KV heads) of one layer's attention shape, batch 1."""
    return (torch.randn(1, sh["hq"], ctx, sh["d"], device=device).to(dt),
            torch.randn(1, sh["hkv"], ctx, sh["d"], device=device).to(dt),
            torch.randn(1, sh["hkv"], ctx, sh["d"], device=device).to(dt))


def prefill_rows(cfgx: dict, device: str, ctx: int) -> list[dict]:
    sh = preset_shape(cfgx["decode_preset"])
    dt, lmax, eta = cfgx["dtype"], max(cfgx["lambdas"]), cfgx["window"]
    q, k, v = random_qkv(sh, ctx, dt, device)
    rows = []
    if kernels_on(device):
        variants = [(lam, "grouped", {}, {}) for lam in cfgx["lambdas"]] + [(lmax, "expanded", {}, {})]
        if ctx == min(cfgx["ttft_ctx"]):  # where the merge kernel's time goes (per-step costs do not depend on ctx)
            variants += [(lmax, "grouped", {}, {"LOLA_MERGE_SELECT": "rank"}),  # the selection before threshold
                         (lmax, "grouped", {"scorer": "recency"}, {}),         # precomputed scores: no SRE scoring
                         (lmax, "grouped", {"feature_map": "hedgehog"}, {}),   # learned phi (linearized checkpoints)
                         (lmax, "grouped", {"sinks": 4}, {}), (0, "grouped", {"sinks": 4}, {})]
        for lam, gqa, extra, env in variants:
            p = make_params(LolaConfig(window=eta, sparse=lam, gqa=gqa, **extra), sh["hq"], sh["hkv"], sh["d"], device)
            with set_env(env):
                _, runs = timed_prefills(q, k, v, p, cfgx["reps"])
            med = {n: statistics.median(r[n] for r in runs) for n in runs[0]}
            label = f"lola l={lam} {gqa}" + "".join(f" {k}={x}" for k, x in {**extra, **env}.items())
            rows.append({"ctx": ctx, "variant": label, **{f"{n}_ms": t for n, t in med.items()},
                         "total_ms": sum(med.values())})
    if dt != torch.bfloat16 or ctx <= 8192:  # the torch fast path scores SRE in float32 only; lambda 0 never scores
        p = make_params(LolaConfig(window=eta, sparse=0), sh["hq"], sh["hkv"], sh["d"], device)
        t = host_times(lambda: lola_chunked(q, k, v, LolaState(), p), device, warmup=1, reps=1)
        rows.append({"ctx": ctx, "variant": "torch lola_chunked l=0", "total_ms": 1000 * t[0]})
    label, setting = "default", SdpaSetting(None, False)
    if device == "cuda":
        from torch.nn.attention import SDPBackend

        label, setting = "cudnn", SdpaSetting([SDPBackend.CUDNN_ATTENTION], False)
    rep = sh["hq"] // sh["hkv"]
    kr, vr = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)

    def full():
        with setting:
            torch.nn.functional.scaled_dot_product_attention(q, kr, vr, is_causal=True)

    try:
        rows.append({"ctx": ctx, "variant": f"sdpa {label} (kv repeated)", "total_ms": bench_us(full, device) / 1000})
    except RuntimeError as e:
        rows.append({"ctx": ctx, "variant": f"sdpa {label}", "error": str(e).splitlines()[0][:160]})
    return rows


def sdpa_contexts():
    """Candidate SDPA settings for full attention, preferred first: (label, backends, force repeat_kv)."""
    from torch.nn.attention import SDPBackend

    return [("cudnn", [SDPBackend.CUDNN_ATTENTION], False), ("cudnn (kv repeated)", [SDPBackend.CUDNN_ATTENTION], True),
            ("flash", [SDPBackend.FLASH_ATTENTION], False), ("efficient", [SDPBackend.EFFICIENT_ATTENTION], False),
            ("default", None, False)]


class SdpaSetting:
    """Context manager: restrict SDPA to some backends, optionally make transformers repeat K/V for GQA."""

    def __init__(self, backends, repeat_kv: bool):
        self.backends, self.repeat_kv = backends, repeat_kv

    def __enter__(self):
        import contextlib

        self.stack = contextlib.ExitStack()
        if self.backends is not None:
            from torch.nn.attention import sdpa_kernel

            self.stack.enter_context(sdpa_kernel(self.backends))
        if self.repeat_kv:
            import transformers.integrations.sdpa_attention as sa

            saved = sa.use_gqa_in_sdpa
            sa.use_gqa_in_sdpa = lambda *a, **k: False
            self.stack.callback(setattr, sa, "use_gqa_in_sdpa", saved)
        return self

    def __exit__(self, *exc):
        self.stack.close()
        return False


def pick_sdpa(model, device: str, kw: str) -> tuple[str, object]:
    """The first SDPA setting under which a short prefill and one decode step of ``model`` run."""
    from transformers import DynamicCache

    if device != "cuda":
        return "default (cpu)", SdpaSetting(None, False)
    errors = []
    for label, backends, rep in sdpa_contexts():
        try:
            with SdpaSetting(backends, rep):
                cache = DynamicCache(config=model.config)
                ids = torch.randint(100, 4000, (1, 256), device=device)
                model(ids, **{kw: cache}, use_cache=True, logits_to_keep=1)
                model(ids[:, :1], **{kw: cache}, use_cache=True, logits_to_keep=1)
                torch.cuda.synchronize()
            return label + (f" (after: {'; '.join(errors)})" if errors else ""), SdpaSetting(backends, rep)
        except RuntimeError as e:
            errors.append(f"{label}: {str(e).splitlines()[0][:120]}")
    raise RuntimeError("no SDPA backend ran: " + " | ".join(errors))


def section_model(cfgx: dict, device: str, clock: Clock, results: dict, save) -> None:
    """TTFT and whole-model decode per preset: full attention, then LoLA for each lambda."""
    use_k = kernels_on(device)
    lola_patch.lola_chunked = K.lola_chunked_triton if use_k else lola_chunked
    lola_patch.lola_decode = K.lola_decode_triton if use_k else lola_decode
    results["lola_path"] = "triton" if use_k else "torch"
    for preset in cfgx["presets"]:
        if clock.left() < 60:
            results["ttft"].append({"preset": preset, "skipped": "time budget"})
            continue
        model_rows(preset, cfgx, device, clock, results, save)
        if device == "cuda":
            torch.cuda.empty_cache()


def model_rows(preset: str, cfgx: dict, device: str, clock: Clock, results: dict, save) -> None:
    from transformers import DynamicCache

    t0 = time.perf_counter()
    model = random_model(preset, cfgx["dtype"], device=device)  # built on the device: no 32 GB fp32 CPU copy
    kw = forward_kw(model)
    load_s = time.perf_counter() - t0
    backend_label, setting = pick_sdpa(model, device, kw)
    for mode, lam in [("full", None)] + [("lola", lam) for lam in cfgx["lambdas"]]:
        if mode == "lola":
            lola_patch.patch_model(model, LolaConfig(window=cfgx["window"], sparse=lam))
        for ctx in cfgx["ttft_ctx"]:
            est = 6 * (ctx / 32768) * (4 if "8b" in preset else 1) * (cfgx["reps"] + 1)
            if device == "cuda" and clock.left() < 20 + est:
                results["ttft"].append({"preset": preset, "mode": mode, "lambda": lam, "ctx": ctx,
                                        "skipped": "time budget"})
                continue
            gen = torch.Generator().manual_seed(ctx)
            ids = torch.randint(100, 40000, (1, ctx), generator=gen).to(device)
            holder = {}

            def prefill(ids=ids, holder=holder, mode=mode):
                cache = lola_patch.new_cache(model) if mode == "lola" else DynamicCache(config=model.config)
                with setting if mode == "full" else _null():
                    logits = model(ids, **{kw: cache}, use_cache=True, logits_to_keep=1).logits[:, -1]
                holder["cache"], holder["next"] = cache, logits.argmax(-1, keepdim=True)

            peak_reset(device)
            times = host_times(prefill, device, warmup=1, reps=cfgx["reps"])
            results["ttft"].append({
                "preset": preset, "mode": mode, "lambda": lam, "window": cfgx["window"] if lam is not None else None,
                "ctx": ctx, "ttft_ms": 1000 * statistics.median(times),
                "ttft_ms_all": [round(1000 * t, 3) for t in times], "peak_vram_mib": peak_mib(device),
                "sdpa_backend": backend_label if mode == "full" else None, "model_load_s": round(load_s, 1)})
            if ctx in cfgx["model_decode_ctx"]:
                results["decode_model"].append(model_decode(model, kw, holder, mode, setting, cfgx, device, preset,
                                                            lam, ctx))
            holder.clear()
            save()
        if mode == "lola":
            lola_patch.unpatch_model(model)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def model_decode(model, kw, holder, mode, setting, cfgx, device, preset, lam, ctx) -> dict:
    """ms/token of greedy decoding continuing the cache of the last TTFT run (the first tokens warm up, covering
    a chunk boundary so every kernel is compiled before timing)."""
    cache, nxt = holder["cache"], holder["next"]
    n_warm = cfgx["window"] + 1 if mode == "lola" else 2
    n = cfgx["model_decode_tokens"]

    def step(tok):
        with setting if mode == "full" else _null():
            return model(tok, **{kw: cache}, use_cache=True, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)

    for _ in range(n_warm):
        nxt = step(nxt)
    peak_reset(device)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        nxt = step(nxt)
    sync(device)
    return {"preset": preset, "mode": mode, "lambda": lam, "ctx": ctx, "tokens": n,
            "decode_ms_per_token": 1000 * (time.perf_counter() - t0) / n, "peak_vram_mib": peak_mib(device)}


# ---------------------------------------------------------------------------------------------------------------
# compile check (no GPU needed)

COMPILE_CASES = [  # (dtype, head_dim, feature map, gqa, lambda); the first is the benchmark's configuration
    (torch.bfloat16, 64, "hedgehog-identity", "grouped", 512),
    (torch.bfloat16, 128, "hedgehog-identity", "grouped", 512),
    (torch.float16, 64, "elu", "grouped", 0), (torch.bfloat16, 128, "relu", "expanded", 16),
    (torch.float32, 64, "hedgehog", "expanded", 16), (torch.bfloat16, 64, "hedgehog", "grouped", 512)]


class _Recorder:
    """Stands in for a Triton kernel: ``kernel[grid](*args, **kw)`` records the launch instead of running it."""

    def __init__(self, fn, launches: list):
        self.fn, self.launches = fn, launches

    def __getitem__(self, grid):
        return lambda *args, **kw: self.launches.append((self.fn, args, kw))


def _signature(fn, args, kw) -> tuple[dict, dict, dict]:
    types = {torch.bfloat16: "*bf16", torch.float16: "*fp16", torch.float32: "*fp32", torch.int32: "*i32",
             torch.int64: "*i64"}
    vals = dict(zip(fn.arg_names, args))
    opts = {k: v for k, v in kw.items() if k in ("num_warps", "num_stages")}
    vals.update({k: v for k, v in kw.items() if k not in opts})
    sig, consts = {}, {}
    for param, name in zip(fn.params, fn.arg_names):
        v = vals[name]
        if param.is_constexpr:
            sig[name], consts[name] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            sig[name] = types[v.dtype]
        else:
            sig[name] = "fp32" if isinstance(v, float) else "i32"
    return sig, consts, opts


def _capture_case(dt, d: int, fm: str, gqa: str, lam: int) -> None:
    """Call every wrapper once (prefill, decode kernel, chunk-boundary merge) with kernels replaced by recorders."""
    from lola_bench.attention.kernels import decode as kdec
    from lola_bench.attention.kernels import merge as kmerge
    from lola_bench.attention.kernels import prefill as kpre

    p = make_params(LolaConfig(window=64, sparse=lam, feature_map=fm, gqa=gqa), 32, 8, d, "cpu")
    q, k, v = (torch.randn(1, h, 700, d).to(dt) for h in (32, 8, 8))
    for step in (lambda: kpre.prefill(q, k, v, LolaState(), p),
                 lambda: kdec.decode_attention(q[:, :, :1], synthetic_state(p, 700, dt, "cpu"), p),
                 lambda: kmerge.evict_before_triton(synthetic_state(p, 700, dt, "cpu"), p, 700 - 64)):
        try:
            step()
        except (RuntimeError, IndexError):  # nothing ran, so index buffers hold garbage afterwards
            pass


def compile_check(quick: bool) -> list[dict]:
    """Compile every kernel variant the wrappers launch for the cases above, for sm_90, without a GPU: launch
    arguments are captured from the real wrappers on CPU tensors, then triton.compile builds the cubin, whose
    register / stack use cuobjdump reports (stack > 0 means spills)."""
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from lola_bench.attention.kernels import decode as kdec
    from lola_bench.attention.kernels import merge as kmerge
    from lola_bench.attention.kernels import prefill as kpre

    launches: list = []
    saved = (kmerge._merge_kernel, kpre._attn_kernel, kdec._partial_kernel, kdec._decode_kernel)
    (kmerge._merge_kernel, kpre._attn_kernel, kdec._partial_kernel,
     kdec._decode_kernel) = (_Recorder(f, launches) for f in saved)
    try:
        for case in COMPILE_CASES[:1] if quick else COMPILE_CASES:
            _capture_case(*case)
        with set_env({"LOLA_MERGE_SELECT": "rank"}):  # the rank-counting selection (candidates beyond registers)
            _capture_case(*COMPILE_CASES[0])
    finally:
        kmerge._merge_kernel, kpre._attn_kernel, kdec._partial_kernel, kdec._decode_kernel = saved
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    rows, seen = [], set()
    for fn, args, kw in launches:
        sig, consts, opts = _signature(fn, args, kw)
        key = (fn.__name__, tuple(sorted(sig.items())), tuple(sorted((k, str(v)) for k, v in consts.items())))
        if key in seen:
            continue
        seen.add(key)
        dtype = next(v for n, v in sig.items() if n in ("KU", "Q") and v.startswith("*"))[1:]
        row = {"kernel": fn.__name__, "dtype": dtype, **{k: consts[k] for k in ("D", "GROUP", "PHI", "LEARNED",
               "READOUT", "HAS_LIN", "PREC", "SELECT", "NPAD") if k in consts}}
        t0 = time.perf_counter()
        try:
            src = ASTSource(fn, sig, consts)
            cubin = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts).asm["cubin"]
            row["compile_s"] = round(time.perf_counter() - t0, 1)
            if cuobjdump.is_file():
                with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                    f.write(cubin)
                    f.flush()
                    usage = subprocess.run([str(cuobjdump), "--dump-resource-usage", f.name], capture_output=True,
                                           text=True).stdout
                m = re.search(r"REG:(\d+) STACK:(\d+)", usage)
                if m:
                    row["registers"], row["stack_bytes"] = int(m.group(1)), int(m.group(2))
            row["ok"] = True
        except Exception as e:  # noqa: BLE001 - report every failing variant
            msg = str(e)  # Triton puts the cause after the quoted source: keep both ends
            row["ok"], row["error"] = False, f"{type(e).__name__}: {msg[:300]} ... {msg[-700:]}"
        rows.append(row)
        print(f"[compile-check] {row}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# output

def source_digest() -> str:
    """sha256 over lola_bench/**/*.py and this script: identifies the code that ran even where the device's copy of
    the checkout carries stale git metadata (the device tool copies the working tree; its .git can lag)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(REPO.glob("lola_bench/**/*.py")) + [Path(__file__).resolve()]:
        h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def device_slug(device: str, smoke: bool) -> str:
    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug + ("-smoke" if smoke else "")


def fmt(x, nd=1):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}" if not math.isnan(x) else "nan"
    return str(x)


def table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]


def markdown(res: dict) -> str:
    prov = res["provenance"]
    ver = prov["versions"]
    lines = [f"# LoLA kernel benchmark: {res['device_name']}", "",
             f"- smoke: {res['smoke']}; dtype {res['dtype']}; LoLA path: {res.get('lola_path', '-')}; "
             f"fp32 dot precision: {res['fp32_dot_precision']}",
             f"- commit {prov['git'].get('commit', '?')[:12]} (dirty: {prov['git'].get('dirty')}); "
             f"torch {ver.get('torch')}, triton {ver.get('triton')}, transformers {ver.get('transformers')}; "
             f"{prov['utc_time']}",
             f"- wall time {fmt(res.get('wall_s'))} s", "", "## Correctness (kernel vs torch on this device)", ""]
    skip = ("check", "shape", "rel_err", "tol", "ok")
    lines += table(["check", "shape", "rel err", "tol", "ok", "extra"],
                   [[c["check"], c["shape"], f"{c['rel_err']:.2e}", f"{c['tol']:.0e}", str(c["ok"]),
                     str({k: v for k, v in c.items() if k not in skip})] for c in res["correctness"]])
    cfg = res["config"]
    lines += ["", f"## Attention-side decode, us/token ({cfg['decode_layers']} layers of {cfg['decode_preset']})", ""]
    rows = []
    for r in res["decode_attention"]:
        if "skipped" in r:
            rows.append([r["ctx"], "skipped: " + r["skipped"]] + [""] * 7)
            continue
        g = r.get
        rows.append([r["ctx"], f"{fmt(g('lola_kernel_graph_us'))} / {fmt(g('lola_kernel_graph_warm_us'))}",
                     g("lola_kernel_eager_us"), g("lola_step_eager_us"), g("merge_amortized_us_per_token"),
                     f"{fmt(g('merge_us_per_layer'))} / {fmt(g('merge_rank_select_us_per_layer'))}",
                     g("torch_attend_eager_us"),
                     f"{fmt(g('full_sdpa_graph_us'))} / {fmt(g('full_sdpa_graph_warm_us'))}",
                     g("full_sdpa_eager_us")])
    lines += table(["ctx", "LoLA kernel graph (cold / warm)", "LoLA kernel eager", "LoLA full step eager",
                    "merge amortized", "merge per layer (threshold / rank select)", "torch attend eager",
                    "full SDPA graph (cold / warm)", "full SDPA eager"], rows)
    lines += ["", f"## Attention-side prefill, one layer of {cfg['decode_preset']}, ms", ""]
    lines += table(["ctx", "variant", "setup", "merge (phase A)", "attention (phase B)", "finalize", "total", "error"],
                   [[r["ctx"], r.get("variant", "-"), r.get("setup_ms"), r.get("merge_ms"), r.get("attention_ms"),
                     r.get("finalize_ms"), r.get("total_ms"), r.get("error", r.get("skipped", ""))]
                    for r in res["prefill_attention"]])
    if res.get("merge_tiles"):
        lines += ["", "## Merge kernel tiles (phase A, one layer, ms; `LOLA_MERGE_TILES`)", ""]
        lines += table(["ctx", "lambda", "tiles", "merge ms", "max |diff| vs first", "error"],
                       [[r.get("ctx"), r.get("lambda"), r.get("tiles"), r.get("merge_ms"),
                         fmt(r.get("max_abs_diff_vs_first"), 4), r.get("error", r.get("skipped", ""))]
                        for r in res["merge_tiles"]])
    lines += ["", "## Time to first token (whole model), ms", ""]
    rows = []
    for r in res["ttft"]:
        if "skipped" in r:
            rows.append([r["preset"], r.get("mode", "-"), r.get("lambda"), r.get("ctx"), "skipped: " + r["skipped"],
                         "", ""])
        else:
            rows.append([r["preset"], r["mode"], r["lambda"], r["ctx"], r["ttft_ms"], r["peak_vram_mib"],
                         r["sdpa_backend"] or "-"])
    lines += table(["preset", "mode", "lambda", "ctx", "TTFT ms", "peak VRAM MiB", "SDPA backend"], rows)
    ratios = ttft_ratios(res["ttft"])
    if ratios:
        lines += [""] + table(["preset", "ctx", "LoLA l=max / l=0", "LoLA l=0 / full", "LoLA l=max / full"],
                              [[r["preset"], r["ctx"], f"{r['lam_ratio']:.3f}", f"{r['lola0_vs_full']:.3f}",
                                f"{r['lolamax_vs_full']:.3f}"] for r in ratios])
    lines += ["", "## Whole-model decode, ms/token", ""]
    lines += table(["preset", "mode", "lambda", "ctx", "ms/token", "peak VRAM MiB"],
                   [[r["preset"], r["mode"], r["lambda"], r["ctx"], f"{r['decode_ms_per_token']:.2f}",
                     r["peak_vram_mib"]] for r in res["decode_model"]])
    lines += ["", "## Targets (issue #8)", ""]
    lines += table(["target", "measured", "met"],
                   [[t["target"], t["measured"], {True: "yes", False: "NO", None: "unmeasured"}[t["ok"]]]
                    for t in res.get("targets", [])])
    if res.get("errors"):
        lines += ["", "## Errors", ""] + [f"- {e}" for e in res["errors"]]
    return "\n".join(lines) + "\n"


def targets(res: dict) -> list[dict]:
    """The issue's targets, each judged from the measured rows: ok True/False, or None when unmeasured."""
    out = []
    cfg = res["config"]
    dec = [r for r in res["decode_attention"] if "lola_kernel_graph_us" in r]
    per_tok = {r["ctx"]: r["lola_kernel_graph_us"] + r.get("merge_amortized_us_per_token", 0.0) for r in dec}
    out.append({"target": f"decode <= 50 us/token, {cfg['decode_layers']} layers of {cfg['decode_preset']}, graph "
                          "mode (kernel + amortized merge)",
                "measured": ", ".join(f"{c}: {v:.1f}" for c, v in sorted(per_tok.items())) or "-",
                "ok": (max(per_tok.values()) <= 50.0) if per_tok else None})
    flat = max(per_tok.values()) / min(per_tok.values()) if len(per_tok) > 1 else None
    out.append({"target": "decode flat from 4K to 128K (max / min <= 1.2)",
                "measured": f"{flat:.2f}" if flat else "-", "ok": (flat <= 1.2) if flat else None})
    ratios = ttft_ratios(res["ttft"])
    lam = [r["lam_ratio"] for r in ratios]
    out.append({"target": "TTFT lambda=max <= 1.10 x lambda=0 (every preset and context)",
                "measured": ", ".join(f"{r['preset']}@{r['ctx']}: {r['lam_ratio']:.3f}" for r in ratios) or "-",
                "ok": (max(lam) <= 1.10) if lam else None})
    long = [r for r in ratios if r["ctx"] >= 32768]
    out.append({"target": "LoLA prefill faster than cuDNN full attention at >= 32K (whole-model TTFT)",
                "measured": ", ".join(f"{r['preset']}@{r['ctx']}: {r['lolamax_vs_full']:.3f} x full"
                                      for r in long) or "-",
                "ok": all(r["lolamax_vs_full"] < 1.0 for r in long) if long else None})
    checks = res["correctness"]
    out.append({"target": f"kernels match the torch reference on this device ({res.get('dtype')})",
                "measured": f"{sum(bool(c['ok']) for c in checks)}/{len(checks)} checks" if checks else "-",
                "ok": all(bool(c["ok"]) for c in checks) if checks else None})
    return out


def ttft_ratios(rows: list[dict]) -> list[dict]:
    by = {(r["preset"], r["mode"], r["lambda"], r["ctx"]): r["ttft_ms"] for r in rows if "ttft_ms" in r}
    out = []
    for (preset, mode, _lam, ctx), t in by.items():
        if mode != "full":
            continue
        lams = sorted(k[2] for k in by if k[0] == preset and k[1] == "lola" and k[3] == ctx)
        if len(lams) < 2:
            continue
        t0, tm = by[(preset, "lola", lams[0], ctx)], by[(preset, "lola", lams[-1], ctx)]
        out.append({"preset": preset, "ctx": ctx, "lam_ratio": tm / t0, "lola0_vs_full": t0 / t,
                    "lolamax_vs_full": tm / t})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "results" / "perf"), help="output directory")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on any device (tests the script)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="skip items that would end after this many seconds")
    ap.add_argument("--presets", default=None, help="comma-separated subset of the model presets")
    ap.add_argument("--compile-check", action="store_true",
                    help="only compile the kernels for sm_90 (no GPU needed) and report registers / spills")
    ap.add_argument("--quick", action="store_true", help="with --compile-check: the benchmark configuration only")
    ap.add_argument("--sections", default="correctness,decode_attention,prefill_attention,merge_tiles,model",
                    help="comma-separated subset of: correctness, decode_attention, prefill_attention, merge_tiles, "
                         "model")
    args = ap.parse_args(argv)
    if args.compile_check:
        os.environ.pop("TRITON_INTERPRET", None)  # compiled kernels (decided when their modules are imported)
        rows = compile_check(args.quick)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "compile-check.json").write_text(json.dumps(rows, indent=1) + "\n")
        return 0 if all(r["ok"] for r in rows) else 1
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not args.smoke and device != "cuda":
        print("gpu_bench: no CUDA device (use --smoke to test the script on CPU)", file=sys.stderr)
        return 2
    cfgx = dict(SMOKE if args.smoke else FULL)
    if args.presets:
        cfgx["presets"] = [p.strip() for p in args.presets.split(",") if p.strip()]
    sections = {s.strip() for s in args.sections.split(",")}
    clock = Clock(args.budget_s)
    torch.manual_seed(0)
    from lola_bench.attention.kernels._host import fp32_dot_precision

    res = {"smoke": args.smoke, "device": device,
           "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
           "dtype": str(cfgx["dtype"]).replace("torch.", ""), "provenance": provenance(device),
           "source_sha256": source_digest(),
           "kernels_available": K.kernels_available(), "fp32_dot_precision": fp32_dot_precision(cfgx["dtype"]),
           "config": {k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in cfgx.items()},
           "correctness": [], "decode_attention": [], "prefill_attention": [], "merge_tiles": [], "ttft": [],
           "decode_model": [],
           "errors": [],
           "notes": [
               "decode graph mode: the fused decode kernel of every layer over a fixed-size state, captured in one "
               "CUDA graph; the per-token append and the chunk-boundary merge (every `window` tokens) are not in the "
               "graph (merge_amortized_us_per_token gives the merge's share)",
               "lola_step_eager_us: full lola_decode_triton steps (append + merge at the boundary + kernel) averaged "
               "over one chunk of tokens",
               "TTFT: whole-model forward of the prompt with logits for the last position only, median of the timed "
               "runs after one warm-up run of the same length (Triton compilation happens in the warm-up)"]}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = device_slug(device, args.smoke)

    def save():
        res["wall_s"] = round(clock.elapsed(), 1)
        res["targets"] = targets(res)
        (out_dir / f"{slug}.json").write_text(json.dumps(res, indent=1, default=str) + "\n")
        (out_dir / f"{slug}.md").write_text(markdown(res))

    def run_section(name, fn):
        if name not in sections:
            return
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                fn()
        except Exception as e:  # noqa: BLE001 - record and go on to the next section
            res["errors"].append(f"{name}: {type(e).__name__}: {e}")
            traceback.print_exc()
        res.setdefault("section_s", {})[name] = round(time.perf_counter() - t0, 1)
        print(f"[gpu_bench] {name} done in {res['section_s'][name]} s (elapsed {clock.elapsed():.0f} s)", flush=True)
        save()

    run_section("correctness", lambda: res["correctness"].extend(section_correctness(cfgx, device)))
    run_section("decode_attention",
                lambda: res["decode_attention"].extend(section_decode_attention(cfgx, device, clock)))
    run_section("prefill_attention",
                lambda: res["prefill_attention"].extend(section_prefill_attention(cfgx, device, clock)))
    run_section("merge_tiles", lambda: res["merge_tiles"].extend(section_merge_tiles(cfgx, device, clock)))
    run_section("model", lambda: section_model(cfgx, device, clock, res, save))
    save()
    print(markdown(res))
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
