"""Section ``correctness``: each kernel against the torch path / the quadratic reference on the same device, and the
merge kernel's compiled selection against ``split_topk``."""

from __future__ import annotations

import torch

from lola_bench.attention import kernels as K
from lola_bench.attention.chunked import lola_chunked
from lola_bench.attention.common import append_window, attend
from lola_bench.attention.decode import lola_decode
from lola_bench.attention.reference import lola_reference
from lola_bench.attention.state import LolaState
from lola_bench.attention.testing import rel_err

from .common import bench_config, kernels_on, make_params, overlap, preset_shape, set_env, synthetic_state


def section_correctness(cfgx: dict, device: str) -> list[dict]:
    """Kernels vs torch on this device, for the attention shape of every preset; the merge kernel's selection."""
    shapes = [cfgx["decode_preset"]] + [p for p in cfgx["presets"] if p != cfgx["decode_preset"]]
    out = []
    for preset in shapes:
        out += correctness_checks(preset, cfgx, device)
    return out + selection_checks(cfgx["selection_cases"], device) + generation_checks(device)


def generation_checks(device: str) -> list[dict]:
    """``ruler``'s CUDA decode path (``graphed_generate``: static cache, one step captured as a CUDA graph and
    replayed, LoLA's merges between replays) against the eager ``greedy_generate`` on a small random fp32 model:
    the same greedy tokens (rel_err = share of positions that differ), and the graph must be what ran (off CUDA, in
    --smoke, its eager form)."""
    from lola_bench.attention.config import LolaConfig
    from lola_bench.evals.graphed_generate import graphed_generate
    from lola_bench.evals.timing import greedy_generate
    from lola_bench.models.loading import random_model
    from lola_bench.models.patch import is_patched, patch_model, unpatch_model

    model = random_model("tiny", torch.float32, seed=1, initializer_range=0.5).to(device)
    ids = torch.randint(100, 4000, (1, 150), generator=torch.Generator().manual_seed(0))
    out = []
    for name, cfg in (("full", None), ("lola", LolaConfig(window=16, sparse=24, sinks=2, gqa="grouped")),
                      ("evict", LolaConfig(window=16, sparse=24, fold=False, scorer="key_norm"))):
        try:
            if cfg is not None:
                patch_model(model, cfg)
            eager = greedy_generate(model, ids, 70, set(), device)
            got = graphed_generate(model, ids, 70, set(), device)
            again = greedy_generate(model, ids, 70, set(), device)     # TTFT after a capture (allocator state)
            want = eager.tokens
        except Exception as e:  # noqa: BLE001 - a failed check is a row, the other checks still run
            out.append({"check": f"graphed_generate_{name}_tokens", "shape": "random:tiny fp32", "rel_err": 1.0,
                        "tol": 0.0, "ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}"})
            continue
        finally:
            if cfg is not None and is_patched(model):
                unpatch_model(model)
        bad = sum(a != b for a, b in zip(got.tokens, want)) / len(want) if len(got.tokens) == len(want) else 1.0
        first_diff = next((i for i, (a, b) in enumerate(zip(got.tokens, want)) if a != b), None)
        ran = "static cache, CUDA graph" if device == "cuda" else "static cache, eager (not a CUDA device)"
        out.append({"check": f"graphed_generate_{name}_tokens", "shape": "random:tiny fp32", "rel_err": bad,
                    "tol": 0.0, "ok": bad == 0.0 and got.decode_impl == ran,
                    "decode_impl": got.decode_impl, "decode_ms_per_token": 1e3 * (got.decode_s_per_token or 0),
                    "first_differing_token": first_diff, "ttft_ms_eager": 1e3 * eager.ttft_s,
                    "ttft_ms_graphed": 1e3 * got.ttft_s, "ttft_ms_eager_after_capture": 1e3 * again.ttft_s,
                    "decode_ms_per_token_eager": 1e3 * (eager.decode_s_per_token or 0)})
    return out


def selection_checks(cases: list, device: str) -> list[dict]:
    """The merge kernel's top-lambda selection, compiled on this device (the interpreter tests cannot see compiled
    scan or layout bugs), against ``split_topk`` on tie-heavy scores with +-inf, +-0, subnormals and NaN: one chunk
    boundary per case (lambda, selection, num_warps), candidates = lambda + 64. rel_err = share of kept positions
    that differ."""
    from lola_bench.attention.common import leaving_count, split_topk
    from lola_bench.attention.kernels import merge as kmerge
    from lola_bench.attention.kernels._host import select_mode

    if not kernels_on(device):
        return []
    out, saved = [], kmerge.precomputed_scores
    gen = torch.Generator().manual_seed(3)
    vals = torch.tensor([float("-inf"), float("inf"), 0.0, -0.0, 1e-45, -1e-45, 1.0, 2.0, 3.0, float("nan")])
    try:
        for lam, select, warps in cases:
            p = make_params(bench_config(window=64, sparse=lam, scorer="random"), 4, 2, 64, device)
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
            mode, npad = select_mode(n) if select == "threshold" else (0, 0)
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
    p = make_params(bench_config(window=cfgx["window"], sparse=cfgx["corr_sparse"]), hq, hkv, d, device)
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
