#!/usr/bin/env python
"""One attention layer's prefill on CPU: causal SDPA (full attention) vs LoLA (``lola_chunked``), plain batched path
and two-thread pipeline, measured back to back in one process (round robin, so drift hits all alike).

    python scripts/cpu_prefill_bench.py --ctx 1024,4096 --threads 1,2 --repeats 15 [--out FILE.json]

Shape and setting default to the embedded model's (SmolLM2-135M: 9 query heads, 3 KV heads, head_dim 64; hedgehog
maps of the checkpoint's size with random weights, combine calibrated, grouped GQA, 4 sinks) at eta = 64, lambda =
512. Prints min and median ms per variant, the ratio to SDPA (min / min), and where the plain path's time goes
(selection pass with its phi(k) and slot set-up, exact prefix, attention blocks; best run). ``--out`` also writes
the numbers as JSON with provenance. Random inputs: the timing does not depend on the values. Last, the selection's
largest op (one boundary's SRE matmul) on one thread, alone and with the other core busy, next to the core's matmul
rate: how close the pass's arithmetic already runs to the hardware, and what sharing the chip costs it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lola_bench.attention import batched, selection, testing  # noqa: E402
from lola_bench.attention.chunked import lola_chunked  # noqa: E402
from lola_bench.attention.config import LolaConfig  # noqa: E402
from lola_bench.attention.state import LolaState  # noqa: E402

PARTS = {"select_all": (batched, "selection pass"), "softmax_prefix": (batched, "exact prefix"),
         "attend_block": (batched, "attention blocks"), "compute": (selection.PhiRows, "  of which phi(k)"),
         "__init__": (selection.Slots, "  of which slot set-up")}


def sdpa(q, k, v):
    rep = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), is_causal=True)


def lola(q, k, v, p, pipeline: bool):
    os.environ["LOLA_CPU_PIPELINE"] = "1" if pipeline else "0"
    return lola_chunked(q, k, v, LolaState(), p)


def timed_parts(acc: dict):
    """Wrap the parts of the plain path so that their time adds up in ``acc`` (label -> seconds)."""
    for name, (owner, label) in PARTS.items():
        real = getattr(owner, name)

        def wrap(*a, _real=real, _label=label, **kw):
            t = time.perf_counter()
            r = _real(*a, **kw)
            acc[_label] += time.perf_counter() - t
            return r
        setattr(owner, name, wrap)


def _rate(fn, n: int) -> float:
    """Seconds per call of ``fn`` (after a warm-up of a tenth as many calls)."""
    for _ in range(max(1, n // 10)):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def sre_matmul_row(hq: int, d: int, f: int, cand: int, calls: int = 300) -> dict:
    """The selection's one large op, the SRE matmul of one boundary ([H | s]^T (Hq, d+1, F) times phi(k)^T of the
    candidates (Hq, F, lambda + chunk)), on one thread: alone, and while a second thread keeps another core busy
    with a 1024 x 1024 matmul; and that matmul's own rate on one thread, the core's fp32 matmul rate here."""
    import threading

    torch.set_num_threads(1)
    lin, phi = torch.randn(hq, d + 1, f), torch.randn(hq, cand, f)
    big = torch.randn(1024, 1024)
    step = partial(torch.bmm, lin, phi.transpose(1, 2))
    alone, mm = _rate(step, calls), _rate(partial(torch.mm, big, big), 20)
    stop = threading.Event()

    def hog():
        torch.set_num_threads(1)
        while not stop.is_set():
            torch.mm(big, big)
    other = threading.Thread(target=hog)
    other.start()
    try:
        time.sleep(0.2)
        busy = _rate(step, calls)
    finally:
        stop.set()
        other.join()
    flops = 2 * hq * (d + 1) * f * cand
    return {"variant": "sre matmul per boundary", "shape": [hq, d + 1, f, cand], "alone_us": alone * 1e6,
            "other_core_busy_us": busy * 1e6, "gflops_alone": flops / alone / 1e9,
            "core_mm_gflops": 2 * 1024 ** 3 / mm / 1e9}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ctx", default="1024,4096", help="prompt lengths, comma-separated")
    ap.add_argument("--threads", default="1,2", help="torch intra-op thread counts, comma-separated")
    ap.add_argument("--repeats", type=int, default=15, help="timed rounds per point (after one warm-up round)")
    ap.add_argument("--heads", default="9,3,64", help="query heads, KV heads, head_dim")
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--lam", type=int, default=512, help="lambda (sparse cache size)")
    ap.add_argument("--out", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    hq, hkv, d = (int(x) for x in args.heads.split(","))
    cfg = LolaConfig(window=args.window, sparse=args.lam, sinks=4, feature_map="hedgehog", combine="calibrated",
                     gqa="grouped")
    torch.manual_seed(0)
    p = testing.make_params(cfg, hq, hkv, d)
    acc: dict = defaultdict(float)
    timed_parts(acc)
    rows = []
    for th in (int(x) for x in args.threads.split(",")):
        torch.set_num_threads(th)
        for L in (int(x) for x in args.ctx.split(",")):
            q, k, v = testing.qkv(L, hq, hkv, 1, d)
            variants = {"sdpa": sdpa, "lola": partial(lola, p=p, pipeline=False)}
            if th > 1:
                variants["lola pipelined"] = partial(lola, p=p, pipeline=True)
            times: dict = {name: [] for name in variants}
            best_parts, best = {}, float("inf")
            with torch.inference_mode():
                for r in range(args.repeats + 1):
                    for name, fn in variants.items():
                        acc.clear()
                        t = time.perf_counter()
                        fn(q, k, v)
                        dt = time.perf_counter() - t
                        if r:
                            times[name].append(dt)
                            if name == "lola" and dt < best:
                                best, best_parts = dt, dict(acc)
            base = min(times["sdpa"])
            for name, ts in times.items():
                rows.append({"threads": th, "ctx": L, "variant": name, "min_ms": min(ts) * 1e3,
                             "median_ms": statistics.median(ts) * 1e3, "vs_sdpa": min(ts) / base})
            rows.append({"threads": th, "ctx": L, "variant": "lola parts (best run)",
                         **{label: round(s * 1e3, 2) for label, s in best_parts.items()}})
            for row in rows[-len(times) - 1:]:
                print({key: (round(val, 2) if isinstance(val, float) else val) for key, val in row.items()}, flush=True)
    feat = p.feature_map_k.feature_dim
    rows.append(sre_matmul_row(hq, d, feat, args.lam + cfg.chunk_size))
    print({key: (round(val, 2) if isinstance(val, float) else val) for key, val in rows[-1].items()}, flush=True)
    if args.out:
        from lola_bench.attention.kernels import kernel_env
        from lola_bench.provenance import provenance
        from lola_bench.records import atomic_write_json

        atomic_write_json(args.out, {"rows": rows, "config": cfg.to_dict(), "heads": [hq, hkv, d],
                                     "repeats": args.repeats, "kernel_env": kernel_env(),
                                     "provenance": provenance("cpu")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
