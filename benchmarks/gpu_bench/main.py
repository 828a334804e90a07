"""The command line: ``python3 scripts/gpu_bench.py`` (or ``python -m benchmarks.gpu_bench``) runs the sections in
order and writes the results after each one."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from lola_bench.attention import kernels as K
from lola_bench.provenance import provenance

from . import __doc__ as PACKAGE_DOC
from .attention import section_decode_attention, section_merge_tiles, section_prefill_attention
from .common import FULL, SMOKE
from .compile_check import compile_check
from .correctness import section_correctness
from .merge_step import section_merge_step
from .model import section_model
from .report import REPO, device_slug, markdown, source_digest, targets
from .timing import Clock


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=PACKAGE_DOC.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "results" / "perf"), help="output directory")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on any device (tests the script)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="skip items that would end after this many seconds")
    ap.add_argument("--presets", default=None, help="comma-separated subset of the model presets")
    ap.add_argument("--compile-check", action="store_true",
                    help="only compile the kernels for sm_90 (no GPU needed) and report registers / spills")
    ap.add_argument("--quick", action="store_true", help="with --compile-check: the benchmark configuration only")
    ap.add_argument("--sections", default="correctness,decode_attention,prefill_attention,merge_tiles,merge_step,model",
                    help="comma-separated subset of: correctness, decode_attention, prefill_attention, merge_tiles, "
                         "merge_step, model")
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
           "kernel_env": K.kernel_env(),
           "config": {k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in cfgx.items()},
           "correctness": [], "decode_attention": [], "prefill_attention": [], "merge_tiles": [], "merge_step": [],
           "ttft": [], "decode_model": [],
           "errors": [],
           "notes": [
               "decode graph mode: the fused decode kernel of every layer over a fixed-size state, captured in one "
               "CUDA graph; the per-token append and the chunk-boundary merge (every `window` tokens) are not in the "
               "graph (merge_amortized_us_per_token gives the merge's share); merge_static_eager_us_per_layer / "
               "merge_graph_us_per_layer: the steady merge done in place (attention/static_merge.py), eager and "
               "replayed as one CUDA graph for every layer, as the graphed whole-model decode runs it; the decode "
               "target adds merge_graph_amortized_us_per_token where it was measured",
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
    run_section("merge_step", lambda: res["merge_step"].extend(section_merge_step(cfgx, device, clock)))
    run_section("model", lambda: section_model(cfgx, device, clock, res, save))
    save()
    print(markdown(res))
    return 1 if res["errors"] else 0
