"""Sections ``decode_attention``, ``prefill_attention`` and ``merge_tiles``: the attention layer alone, one layer
or ``decode_layers`` layers of the decode preset's shape."""

from __future__ import annotations

import statistics
import time

import torch

from lola_bench.attention import kernels as K
from lola_bench.attention.chunked import lola_chunked
from lola_bench.attention.common import LolaParams, attend
from lola_bench.attention.state import LolaState
from lola_bench.attention.testing import clone_state

from .common import (
    bench_config,
    kernels_on,
    make_params,
    preset_shape,
    random_qkv,
    set_env,
    synthetic_state,
    timed_prefills,
)
from .model import SdpaSetting
from .timing import MIB, Clock, bench_graph_us, bench_us, host_times, sync


def section_decode_attention(cfgx: dict, device: str, clock: Clock) -> list[dict]:
    """Attention-side decode per token for ``decode_layers`` layers of the decode preset's shape."""
    sh = preset_shape(cfgx["decode_preset"])
    cfg = bench_config(window=cfgx["window"], sparse=max(cfgx["lambdas"]))
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
    r.update(static_merge_row(p, ctx, nl, dt, device))
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


def steady_static_state(p: LolaParams, ctx: int, dt, device: str):
    """A ``StaticLolaState`` at position ``ctx`` (a multiple of the chunk) whose next boundary is steady: the sparse
    cache full (sparse + sinks pairs), a chunk about to leave the window; random contents."""
    from lola_bench.attention.static_decode import StaticLolaState

    cfg = p.cfg
    st = synthetic_state(p, ctx, dt, device)
    ws, cap = int(st.win_pos[0]), cfg.sparse + cfg.sinks
    hs, d = st.sp_k.shape[1], st.sp_k.shape[3]
    st.sp_k = torch.randn(1, hs, cap, d, device=device).to(dt)
    st.sp_v = torch.randn(1, hs, cap, d, device=device).to(dt)
    pos = torch.cat([torch.arange(cfg.sinks, device=device),
                     cfg.sinks + torch.randperm(ws - cfg.sinks, device=device)[:cfg.sparse].sort().values])
    st.sp_pos = pos.view(1, 1, cap).expand(1, hs, cap).clone()
    st.n_folded = ws - cap
    return StaticLolaState.from_state(st, p)


def static_merge_row(p: LolaParams, ctx: int, nl: int, dt, device: str) -> dict:
    """The steady chunk-boundary merge in place (``attention.static_merge``, what the graphed whole-model decode
    replays) for ``nl`` layers: eager, and on CUDA replayed as one CUDA graph; us per layer and amortized per token
    over a chunk. The states drift from call to call (the window start advances, H grows): fixed shapes, so the
    timing does not depend on it."""
    from lola_bench.attention.static_merge import static_merge, steady_reason
    from lola_bench.models.graph_capture import first_line

    cfg = p.cfg
    if ctx % cfg.chunk_size or ctx - cfg.window - cfg.chunk_size < cfg.sparse + cfg.sinks:
        return {"merge_static_skipped": "ctx not a chunk multiple, or the cache does not fill"}
    states = [steady_static_state(p, ctx, dt, device) for _ in range(nl)]
    reason = steady_reason(states[0], states[0].win_start_host + cfg.chunk_size)
    if reason:
        return {"merge_static_skipped": reason}

    def merge_all():
        for s in states:
            static_merge(s)

    r = {"merge_static_eager_us_per_layer": bench_us(merge_all, device) / nl}
    if device == "cuda":
        try:
            g = bench_graph_us(merge_all)
            r["merge_graph_us_per_layer"] = g["cold_us"] / nl
            r["merge_graph_amortized_us_per_token"] = g["cold_us"] / cfg.chunk_size
        except Exception as e:      # noqa: BLE001 - recorded in the row
            r["merge_graph_error"] = first_line(e)
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
    p = make_params(bench_config(window=cfgx["window"], sparse=max(cfgx["lambdas"])), sh["hq"], sh["hkv"], sh["d"],
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


def prefill_rows(cfgx: dict, device: str, ctx: int) -> list[dict]:
    sh = preset_shape(cfgx["decode_preset"])
    dt, lmax, eta = cfgx["dtype"], max(cfgx["lambdas"]), cfgx["window"]
    q, k, v = random_qkv(sh, ctx, dt, device)
    rows = []
    if kernels_on(device):
        variants = [(lam, "grouped", {}, {}) for lam in cfgx["lambdas"]]
        variants += [(lmax, "expanded", {}, {}), (lmax, "expanded", {"combine": "lola"}, {})]   # the paper's settings
        if ctx == min(cfgx["ttft_ctx"]):  # where the merge kernel's time goes (per-step costs do not depend on ctx)
            variants += [(lmax, "grouped", {}, {"LOLA_MERGE_SELECT": "rank"}),  # the selection before threshold
                         (lmax, "grouped", {"scorer": "recency"}, {}),         # precomputed scores: no SRE scoring
                         (lmax, "grouped", {"feature_map": "hedgehog"}, {}),   # learned phi (linearized checkpoints)
                         (lmax, "grouped", {"sinks": 4}, {}), (0, "grouped", {"sinks": 4}, {})]
        for lam, gqa, extra, env in variants:
            cfg = bench_config(window=eta, sparse=lam, gqa=gqa, **extra)
            p = make_params(cfg, sh["hq"], sh["hkv"], sh["d"], device)
            with set_env(env):
                _, runs = timed_prefills(q, k, v, p, cfgx["reps"])
            med = {n: statistics.median(r[n] for r in runs) for n in runs[0]}
            label = f"lola l={lam} {gqa}" + "".join(f" {k}={x}" for k, x in {**extra, **env}.items())
            rows.append({"ctx": ctx, "variant": label, **{f"{n}_ms": t for n, t in med.items()},
                         "total_ms": sum(med.values())})
    if dt != torch.bfloat16 or ctx <= 8192:  # the torch fast path scores SRE in float32 only; lambda 0 never scores
        p = make_params(bench_config(window=eta, sparse=0), sh["hq"], sh["hkv"], sh["d"], device)
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
