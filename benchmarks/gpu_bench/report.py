"""Output: provenance digest, device slug, the markdown report, and the issue's targets judged from the rows."""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from .merge_step import TARGET_US_PER_STEP, merge_step_md

REPO = Path(__file__).resolve().parents[2]

def source_digest() -> str:
    """sha256 over lola_bench/**/*.py, this package and its entry script: identifies the code that ran even where the
    device's copy of the checkout carries stale git metadata (the device tool copies the working tree; its .git can
    lag)."""
    import hashlib

    h = hashlib.sha256()
    bench = sorted(Path(__file__).resolve().parent.glob("*.py")) + [REPO / "scripts" / "gpu_bench.py"]
    for f in sorted(REPO.glob("lola_bench/**/*.py")) + bench:
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
            rows.append([r["ctx"], "skipped: " + r["skipped"]] + [""] * 9)
            continue
        g = r.get
        rows.append([r["ctx"], f"{fmt(g('lola_kernel_graph_us'))} / {fmt(g('lola_kernel_graph_warm_us'))}",
                     g("lola_kernel_eager_us"), g("lola_step_eager_us"), g("merge_amortized_us_per_token"),
                     f"{fmt(g('merge_us_per_layer'))} / {fmt(g('merge_rank_select_us_per_layer'))}",
                     f"{fmt(g('merge_static_eager_us_per_layer'))} / {fmt(g('merge_graph_us_per_layer'))}",
                     g("merge_graph_amortized_us_per_token"),
                     g("torch_attend_eager_us"),
                     f"{fmt(g('full_sdpa_graph_us'))} / {fmt(g('full_sdpa_graph_warm_us'))}",
                     g("full_sdpa_eager_us")])
    lines += table(["ctx", "LoLA kernel graph (cold / warm)", "LoLA kernel eager", "LoLA full step eager",
                    "merge amortized", "merge per layer (threshold / rank select)",
                    "in-place merge per layer (eager / graph)", "in-place merge graph amortized", "torch attend eager",
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
    lines += merge_step_md(res.get("merge_step", []), table)
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
    lines += table(["preset", "mode", "lambda", "ctx", "implementation", "ms/token", "GB/s read (of peak)",
                    "peak VRAM MiB"],
                   [[r["preset"], r["mode"], r["lambda"], r["ctx"], _impl(r),
                     f"{r['decode_ms_per_token']:.2f}" if "decode_ms_per_token" in r
                     else r.get("error") or r.get("skipped", "-"),
                     _bandwidth(r), r.get("peak_vram_mib", "-")] for r in res["decode_model"]])
    if any(r.get("capture_error") for r in res["decode_model"]):
        lines += [""] + [f"- capture failed ({r['preset']} {_label(r)} @ {r['ctx']}), timed eagerly: "
                         f"{r['capture_error']}" for r in res["decode_model"] if r.get("capture_error")]
    lines += ["", "## Targets (issue #8)", ""]
    lines += table(["target", "measured", "met"],
                   [[t["target"], t["measured"], {True: "yes", False: "NO", None: "unmeasured"}[t["ok"]]]
                    for t in res.get("targets", [])])
    if res.get("errors"):
        lines += ["", "## Errors", ""] + [f"- {e}" for e in res["errors"]]
    return "\n".join(lines) + "\n"


def _bandwidth(r: dict) -> str:
    if "achieved_gbs" not in r:
        return "-"
    of = f" ({100 * r['of_peak']:.0f}% of {r['peak_gbs']:.0f})" if r.get("of_peak") is not None else ""
    return f"{r['achieved_gbs']:.0f}{of}"


_EAGER_LOOP = {"full": "DynamicCache loop, eager", "lola": "LolaCache loop, eager"}   # rows without an impl


def _impl(r: dict) -> str:
    """The implementation column: the row's impl (the eager loop when it has none), and LoLA's attention in the
    graphed rows (``triton (static)`` or ``torch (static)``)."""
    impl = r.get("impl", _EAGER_LOOP.get(r["mode"], "-"))
    return f"{impl} ({r['attention']})" if r.get("attention") else impl


def _label(r: dict) -> str:
    return r.get("mode", "full") + (f" l={r['lambda']}" if r.get("lambda") is not None else "")


def targets(res: dict) -> list[dict]:
    """The issue's targets, each judged from the measured rows: ok True/False, or None when unmeasured."""
    out = []
    cfg = res["config"]
    dec = [r for r in res["decode_attention"] if "lola_kernel_graph_us" in r]
    # the merge the graphed decode runs at steady boundaries: the in-place merge as a CUDA graph, where measured
    per_tok = {r["ctx"]: r["lola_kernel_graph_us"] + r.get("merge_graph_amortized_us_per_token",
                                                            r.get("merge_amortized_us_per_token", 0.0)) for r in dec}
    how = {r["ctx"]: "graph merge" if "merge_graph_amortized_us_per_token" in r else "eager merge" for r in dec}
    out.append({"target": f"decode <= 50 us/token, {cfg['decode_layers']} layers of {cfg['decode_preset']}, graph "
                          "mode (kernel + amortized merge: the in-place merge replayed as a CUDA graph where it was "
                          "measured, else the eager merge)",
                "measured": ", ".join(f"{c}: {v:.1f} ({how[c]})" for c, v in sorted(per_tok.items())) or "-",
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
    steps = [r for r in res.get("merge_step", []) if r.get("merge") == "stepwise" and "merge_us_per_step" in r]
    out.append({"target": f"phase A <= {TARGET_US_PER_STEP:g} us per chunk step, stepwise merge (one layer, "
                          "lambda max)",
                "measured": ", ".join(f"{r['preset']}@{r['ctx']}: {r['merge_us_per_step']:.1f}" for r in steps) or "-",
                "ok": all(r["merge_us_per_step"] <= TARGET_US_PER_STEP for r in steps) if steps else None})
    graphed = [r for r in res.get("decode_model", []) if r.get("impl") == "static cache, CUDA graph"]
    out.append({"target": "whole-model decode within 2x of the memory-bandwidth floor (static cache, CUDA graph; full "
                          "attention and LoLA, whose floor counts its static cache)",
                "measured": ", ".join(f"{r['preset']} {_label(r)}@{r['ctx']}: {100 * r['of_peak']:.0f}% of peak"
                                      for r in graphed if r.get("of_peak") is not None) or "-",
                "ok": all(r["of_peak"] >= 0.5 for r in graphed) if graphed and all(
                    r.get("of_peak") is not None for r in graphed) else None})
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
