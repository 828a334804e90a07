"""Prefill (TTFT) and decode timing on random token prompts: full attention vs LoLA variants.

Median over ``repeats`` timed runs after one untimed warm-up run per (variant, context). Token ids are
random (speed does not depend on content).
"""

from __future__ import annotations

import statistics
import time

import pandas as pd
import torch

from ..models.patch import is_patched, new_cache
from ..models.variants import attention_variant
from ..settings import implementation_columns, variant_columns
from .timing import PeakMemory, _sync

MIB = 1024 * 1024


@torch.no_grad()
def time_variant(model, ctx: int, decode_tokens: int, device: str, seed: int = 0) -> dict:
    from transformers import DynamicCache

    g = torch.Generator().manual_seed(seed + ctx)
    ids = torch.randint(100, 40000, (1, ctx), generator=g).to(device)
    cache = new_cache(model) if is_patched(model) else DynamicCache(config=model.config)
    with PeakMemory(device) as mem:
        _sync(device)
        t0 = time.perf_counter()
        logits = model(ids, cache=cache, use_cache=True).logits[:, -1]
        nxt = logits.argmax(-1, keepdim=True)
        _sync(device)
        prefill = time.perf_counter() - t0
        t1 = time.perf_counter()
        for _ in range(decode_tokens):
            nxt = model(nxt, cache=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
        _sync(device)
        dec = (time.perf_counter() - t1) / max(decode_tokens, 1)
    return {"prefill_s": prefill, "decode_ms_per_token": dec * 1000 if decode_tokens else float("nan"),
            "peak_mem_mib": mem.peak / MIB}


def run_speed(loaded, variants, ctxs: list[int], *, repeats: int = 3, decode_tokens: int = 16, ckpt=None,
              device_label: str = "cpu", progress=None) -> pd.DataFrame:
    rows = []
    for v in variants:
        with attention_variant(loaded.model, v, ckpt) as used:
            for ctx in ctxs:
                time_variant(loaded.model, min(ctx, 256), 2, loaded.device)  # warm-up
                runs = []
                for r in range(repeats):
                    runs.append(time_variant(loaded.model, ctx, decode_tokens, loaded.device, seed=r))
                    if progress:
                        progress(1, f"{v.mode} ctx={ctx}")
                rows.append({"model": loaded.spec, **variant_columns(v), "ctx": ctx, "repeats": repeats,
                             "ttft_s": statistics.median(x["prefill_s"] for x in runs),
                             "ttft_min_s": min(x["prefill_s"] for x in runs),
                             "decode_ms_per_token": statistics.median(x["decode_ms_per_token"] for x in runs),
                             "peak_mem_mib": max(x["peak_mem_mib"] for x in runs),
                             **implementation_columns(v, used()), "device": device_label})
    df = pd.DataFrame(rows)
    full = df[df.attn == "full"].set_index("ctx")["ttft_s"]
    df["ttft_vs_full"] = [r.ttft_s / full[r.ctx] if r.ctx in full.index else float("nan") for r in df.itertuples()]
    return df
