"""Prefill (TTFT) and decode timing on random token prompts: full attention vs LoLA variants.

TTFT is the prompt's forward with the output head applied to the last position only (``logits_to_keep=1``, as
``generate()`` and ``scripts/gpu_bench.py`` run it; rows say ``prefill_logits``) plus the first token's argmax. Runs
committed before that column existed applied the head to every prompt position (the same cost for every variant,
so their TTFT ratios to full attention were closer to 1).

Median over ``repeats`` timed runs after one untimed warm-up run per (variant, context); the variants take turns,
one repeat each (``run_speed``), so drift of the machine's speed hits them alike. Token ids are random (speed does
not depend on content).

Decode: ``decode_ms_per_token`` is the mean over the ``decode_tokens`` timed tokens, as they fall. A LoLA token that
starts a chunk (position a multiple of ``chunk``; the first decoded token after a 4096-token prompt is one) runs the
chunk-boundary merge, which the other ``chunk - 1`` tokens of the chunk do not: over a few tokens the mean weighs it
far more than generation does. ``decode_boundary_tokens`` says how many timed tokens per run did, and
``decode_amortized_ms_per_token`` is the steady-state cost per token, ((chunk - 1) * plain + boundary) / chunk from
the mean times of the plain and the boundary tokens measured (the plain mean alone when no timed token was a
boundary; for full attention, the mean).

Decode mode (``decode_mode``; ``auto`` = ``graphed`` on CUDA, ``eager`` elsewhere): ``eager`` times one model forward
per token through the variant's cache, as ``generate()`` runs it; on a GPU that mostly times the host. ``graphed``
(``graphed_decode``) decodes after a second, untimed prefill with a static cache (full attention: transformers'
StaticCache; LoLA: static-capacity states, ``models.static_cache``), one decode step captured as a CUDA graph and
replayed per token, LoLA's chunk-boundary merge run eagerly between replays and timed with them (LoLA tokens are timed
in whole chunks, so the mean is the amortized cost); off CUDA, or where capture fails or a configuration has no static
state, the same step runs eagerly and ``decode_impl`` says why. ``decode_gbs`` / ``decode_of_peak``: the bytes a step
reads (parameters + cache) per second, and that against the device's peak memory bandwidth (graphed mode, CUDA); the
cache bytes are full attention's K/V at the mean timed length (its static cache is sized to the run, a few tokens
longer) and every slot of LoLA's static states (masked or not). In graphed mode ``peak_mem_mib`` is the prefill's
(the timed run decodes nothing; the static cache and the graph are not measured).
"""

from __future__ import annotations

import statistics
import time

import pandas as pd
import torch

from ..models.patch import is_patched, new_cache
from ..models.variants import attention_variant
from ..settings import implementation_columns, variant_columns
from .timing import EAGER_DECODE, PeakMemory, _sync, graphed_decode_on, prefill_logits

MIB = 1024 * 1024
PREFILL_LOGITS = "last position"    # TTFT's prefill computes the head for the last position only, as generate() does

def prompt_ids(ctx: int, seed: int, device: str) -> torch.Tensor:
    """The random prompt (1, ctx) of a timed run (the same for every variant)."""
    g = torch.Generator().manual_seed(seed + ctx)
    return torch.randint(100, 40000, (1, ctx), generator=g).to(device)


@torch.no_grad()
def time_variant(model, ctx: int, decode_tokens: int, device: str, seed: int = 0, chunk: int | None = None) -> dict:
    """One prefill of ``ctx`` random tokens, then ``decode_tokens`` decode steps timed one by one (``chunk``: the
    LoLA update cadence, None for full attention)."""
    from transformers import DynamicCache

    ids = prompt_ids(ctx, seed, device)
    cache = new_cache(model) if is_patched(model) else DynamicCache(config=model.config)
    with PeakMemory(device) as mem:
        _sync(device)
        t0 = time.perf_counter()
        logits = prefill_logits(model, ids, cache, "last")                                 # as generate() does
        nxt = logits.argmax(-1, keepdim=True)
        _sync(device)
        prefill = time.perf_counter() - t0
        steps = []
        for _ in range(decode_tokens):
            t1 = time.perf_counter()
            nxt = model(nxt, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
            _sync(device)
            steps.append(time.perf_counter() - t1)
    amortized, n_boundary = amortized_decode(steps, ctx, chunk)
    return {"prefill_s": prefill, "decode_ms_per_token": statistics.fmean(steps) * 1000 if steps else float("nan"),
            "decode_amortized_ms_per_token": amortized * 1000, "decode_boundary_tokens": n_boundary,
            "peak_mem_mib": mem.peak / MIB, "decode_impl": EAGER_DECODE if steps else None}


def graphed_decode(model, attn, ctx: int, decode_tokens: int, device: str, seed: int = 0) -> dict:
    """Decode timing of ``graphed_decode``'s static-cache step after an untimed prefill of the same prompt as
    ``time_variant``'s (LoLA: whole chunks, at least ``decode_tokens``, warmed up across one boundary)."""
    from .graphed_decode import lola_static_decode, static_decode

    ids = prompt_ids(ctx, seed, device)
    if attn.mode == "full":
        row, _ = static_decode(model, ids, decode_tokens, device)
    else:
        chunk = attn.lola.chunk_size
        n = -(-decode_tokens // chunk) * chunk
        row, _ = lola_static_decode(model, ids, n, device, n_warm=chunk + 1)   # kernels: as the layers choose
    impl = row["impl"] + (f" ({row['eager_reason']})" if row.get("eager_reason") else "")
    if row.get("merges"):                   # LoLA: how its chunk-boundary merges ran (copy, in place, CUDA graph)
        impl += f"; merges: {row['merges']}" + (f" (merge capture: {row['merge_capture_error']})"
                                                if row.get("merge_capture_error") else "")
    return {"decode_ms_per_token": row["decode_ms_per_token"],
            "decode_amortized_ms_per_token": row["decode_ms_per_token"],
            "decode_boundary_tokens": row.get("boundary_merges", 0), "decode_impl": impl,
            "decode_attention": row.get("attention"), "decode_gbs": row["achieved_gbs"],
            "decode_of_peak": row["of_peak"]}


def amortized_decode(steps: list[float], ctx: int, chunk: int | None) -> tuple[float, int]:
    """(steady-state time per token, timed tokens that started a chunk) from the times of decode steps at positions
    ctx, ctx + 1, ... (see the module docstring); NaN when nothing was timed."""
    boundary = [t for i, t in enumerate(steps) if chunk and (ctx + i) % chunk == 0]
    plain = [t for i, t in enumerate(steps) if not (chunk and (ctx + i) % chunk == 0)]
    if not boundary:
        return (statistics.fmean(plain) if plain else float("nan")), 0
    if not plain:
        return statistics.fmean(boundary), len(boundary)
    return ((chunk - 1) * statistics.fmean(plain) + statistics.fmean(boundary)) / chunk, len(boundary)


def run_speed(loaded, variants, ctxs: list[int], *, repeats: int = 3, decode_tokens: int = 16, ckpt=None,
              device_label: str = "cpu", progress=None, decode_mode: str = "auto") -> pd.DataFrame:
    """Per context, the variants run round robin, one repeat of each in turn (each after one untimed warm-up), so a
    machine whose speed drifts during the run (shared or throttled cores) slows them alike instead of whichever ran
    last. Each repeat applies its variant afresh (patching is cheap next to a prefill). ``decode_mode``: see the
    module docstring."""
    graphed = graphed_decode_on(decode_mode, loaded.device)
    rows = []
    for ctx in ctxs:
        runs: list[list] = [[] for _ in variants]      # per variant: its timed runs, and what computed each
        names: list[list] = [[] for _ in variants]
        for v in variants:
            with attention_variant(loaded.model, v, ckpt):
                time_variant(loaded.model, min(ctx, 256), 2, loaded.device)  # warm-up
        for r in range(repeats):
            for i, v in enumerate(variants):
                chunk = v.lola.chunk_size if v.lola else None
                with attention_variant(loaded.model, v, ckpt) as used:
                    res = time_variant(loaded.model, ctx, 0 if graphed else decode_tokens, loaded.device, seed=r,
                                       chunk=chunk)
                    name = used()
                    if graphed and decode_tokens:
                        res.update(graphed_decode(loaded.model, v, ctx, decode_tokens, loaded.device, seed=r))
                        dec = res.pop("decode_attention")
                        if name and dec and dec != name:
                            name = f"decode: {dec}; prefill: {name}"
                    runs[i].append(res)
                    names[i].append(name)
                if progress:
                    progress(1, f"{v.mode} ctx={ctx}")
        for i, v in enumerate(variants):
            rs = runs[i]
            used_names = [n for n in dict.fromkeys(names[i]) if n]
            rows.append({"model": loaded.spec, **variant_columns(v), "ctx": ctx, "repeats": repeats,
                         "ttft_s": statistics.median(x["prefill_s"] for x in rs),
                         "ttft_min_s": min(x["prefill_s"] for x in rs),
                         "decode_ms_per_token": statistics.median(x["decode_ms_per_token"] for x in rs),
                         "decode_amortized_ms_per_token": statistics.median(
                             x["decode_amortized_ms_per_token"] for x in rs),
                         "decode_boundary_tokens": rs[0]["decode_boundary_tokens"] if rs else 0,
                         "peak_mem_mib": max(x["peak_mem_mib"] for x in rs), "prefill_logits": PREFILL_LOGITS,
                         "decode_impl": " + ".join(dict.fromkeys(x["decode_impl"] for x in rs
                                                                 if x.get("decode_impl"))) or None,
                         **({"decode_gbs": statistics.median(x["decode_gbs"] for x in rs),
                             "decode_of_peak": _median_or_none([x["decode_of_peak"] for x in rs])}
                            if graphed and decode_tokens else {}),
                         **implementation_columns(v, " + ".join(used_names) or None), "device": device_label})
    df = pd.DataFrame(rows)
    full = df[df.attn == "full"].set_index("ctx")["ttft_s"]
    df["ttft_vs_full"] = [r.ttft_s / full[r.ctx] if r.ctx in full.index else float("nan") for r in df.itertuples()]
    return df


def _median_or_none(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
