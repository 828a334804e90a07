"""Section ``model``: time to first token and whole-model decode of random-weight models, full attention (SDPA,
the backend that ran is recorded) against LoLA through the kernels; each decode eagerly and with a static cache and
a CUDA-graph step (``graphed_decode``)."""

from __future__ import annotations

import statistics
import time

import torch

from lola_bench.attention import kernels as K
from lola_bench.attention.chunked import lola_chunked
from lola_bench.attention.decode import lola_decode
from lola_bench.evals.graphed_decode import forward_kw, lola_static_decode, static_decode
from lola_bench.models import patch as lola_patch
from lola_bench.models.loading import random_model

from .common import bench_config, kernels_on
from .timing import Clock, host_times, peak_mib, peak_reset, sync


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
            lola_patch.patch_model(model, bench_config(window=cfgx["window"], sparse=lam))
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
                if cfgx.get("graph_decode", True):
                    holder.clear()          # the eager run's cache: free before the static one is allocated
                    results["decode_model"].append(
                        graphed_row(model, ids, setting, backend_label, cfgx, device, preset, ctx) if mode == "full"
                        else lola_graphed_row(model, ids, cfgx, device, preset, lam, ctx, clock))
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


def graphed_row(model, ids, setting, backend_label, cfgx, device, preset, ctx) -> dict:
    """Full attention with a static cache and a CUDA-graph decode step (``graphed_decode``). The static cache passes
    a mask over its whole length, which the SDPA backend ``pick_sdpa`` chose (probed without a mask) may refuse or
    not capture: then PyTorch's default choice is tried; the row names the backend that ran and what failed before.
    A failure of both is a row too."""
    base = {"preset": preset, "mode": "full", "lambda": None, "ctx": ctx}
    failed: list[str] = []
    for label, ctxm in ((backend_label, setting), ("default", _null())):
        try:
            peak_reset(device)
            with ctxm:
                row, _ = static_decode(model, ids, cfgx["model_decode_tokens"], device)
        except Exception as e:  # noqa: BLE001  (the bench goes on; the row says what failed)
            failed.append(f"{label}: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}")
            continue
        if row.get("capture_error") and label != "default":
            failed.append(f"{label}: capture: {row['capture_error']}")
            continue
        return {**base, **row, "sdpa_backend": label, "peak_vram_mib": peak_mib(device),
                "failed_first": "; ".join(failed) or None}
    return {**base, "impl": "static cache", "error": "; ".join(failed)}


def lola_graphed_row(model, ids, cfgx, device, preset, lam, ctx, clock) -> dict:
    """LoLA with static-capacity states and a CUDA-graph decode step (``graphed_decode.lola_static_decode``), the
    chunk-boundary merge between replays (the steady ones in place, replayed as a CUDA graph; the others eager, the
    Triton merge where the kernels run, as the eager row). Times a whole number of chunks, so the merges are
    amortized as in steady decoding; the warm-up covers a boundary, so every kernel is compiled before timing.
    Skipped (the row says so) when the budget cannot hold its prefill."""
    base = {"preset": preset, "mode": "lola", "lambda": lam, "window": cfgx["window"], "ctx": ctx}
    est = 6 * (ctx / 32768) * (4 if "8b" in preset else 1)
    if device == "cuda" and clock.left() < 20 + est:
        return {**base, "impl": "static cache", "skipped": "time budget"}
    chunk = cfgx["window"]                                    # bench_config leaves chunk = window
    n = -(-max(cfgx["model_decode_tokens"], chunk) // chunk) * chunk
    try:
        peak_reset(device)
        row, _ = lola_static_decode(model, ids, n, device, n_warm=chunk + 1, use_kernels=kernels_on(device))
    except Exception as e:  # noqa: BLE001  (the bench goes on; the row says what failed)
        return {**base, "impl": "static cache", "error": f"{type(e).__name__}: "
                f"{(str(e).strip().splitlines() or [''])[0][:160]}"}
    return {**base, **row, "peak_vram_mib": peak_mib(device)}

