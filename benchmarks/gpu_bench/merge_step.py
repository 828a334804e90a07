"""Section ``merge_step``: phase A of one layer's prefill (the chunk-boundary merge with the linear readout) per chunk
step, in microseconds, for each merge (``$LOLA_MERGE``: the persistent kernel, the step-parallel merge replayed as a
CUDA graph, the same launched eagerly), next to the issue's target of about 10 us per step (#16: the floor is the
synchronisation between steps, not arithmetic). Every preset's attention shape, lambda max, grouped GQA; each row
also says whether the merge kept the same pairs as the persistent kernel and how far its output is from it."""

from __future__ import annotations

import statistics

import torch

from lola_bench.attention.kernels.merge_steps import clear_graphs
from lola_bench.attention.kernels.prefill import build_schedule, marks_ms, prefill
from lola_bench.attention.state import LolaState

from .common import bench_config, kernels_on, make_params, preset_shape, random_qkv, set_env
from .timing import Clock

MERGE_MODES = ("persistent", "stepwise", "stepwise-eager")
TARGET_US_PER_STEP = 10.0  # issue #16: "at <= 10 us per step, lambda=512 at 32K costs ... 82 ms"


def _phase_a(q, k, v, p, reps: int) -> tuple[torch.Tensor, LolaState, list[float]]:
    """One warm-up prefill (compiles; the stepwise merge runs eagerly and captures its graph), then ``reps`` timed
    ones (graph replays): (the last timed run's output and state, so that the replays are what gets checked; merge
    ms of each)."""
    prefill(q, k, v, LolaState(), p)
    times, out, st = [], None, None
    for _ in range(max(1, reps)):
        marks: list = []
        st = LolaState()
        out = prefill(q, k, v, st, p, marks=marks)
        times.append(marks_ms(marks)["merge"])
    return out, st, times


def section_merge_step(cfgx: dict, device: str, clock: Clock) -> list[dict]:
    if not kernels_on(device):
        return [{"skipped": "Triton kernels not available"}]
    lam, eta = max(cfgx["lambdas"]), cfgx["window"]
    rows = []
    for preset in cfgx["presets"]:
        sh = preset_shape(preset)
        p = make_params(bench_config(window=eta, sparse=lam), sh["hq"], sh["hkv"], sh["d"], device)
        for ctx in cfgx["ttft_ctx"]:
            base = {"preset": preset, "ctx": ctx, "lambda": lam, "gqa": "grouped",
                    "steps": len(build_schedule(0, 0, 0, 0, ctx, p.cfg)[0]), "target_us_per_step": TARGET_US_PER_STEP}
            if clock.left() < cfgx["merge_step_reserve_s"]:
                rows.append({**base, "skipped": "time budget"})
                continue
            q, k, v = random_qkv(sh, ctx, cfgx["dtype"], device)
            ref = None
            for mode in MERGE_MODES:
                row = {**base, "merge": mode}
                try:
                    with set_env({"LOLA_MERGE": mode}):
                        out, st, times = _phase_a(q, k, v, p, cfgx["reps"])
                    row["merge_ms"] = statistics.median(times)
                    row["merge_us_per_step"] = 1000.0 * row["merge_ms"] / base["steps"]
                    ref = (out, st) if ref is None else ref
                    row["same_selection_as_persistent"] = bool(torch.equal(st.sp_pos, ref[1].sp_pos))
                    row["max_abs_diff_vs_persistent"] = float((out.float() - ref[0].float()).abs().max())
                except Exception as e:  # noqa: BLE001 - a merge that fails to compile or capture is a result too
                    first = (str(e).strip().splitlines() or [""])[0]
                    row["error"] = f"{type(e).__name__}: {first[:300]}"
                rows.append(row)
                print(f"[merge_step] {row}", flush=True)
            del q, k, v, ref
            clear_graphs()                  # their copies of this shape's inputs would outlive the section
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


def merge_step_md(rows: list[dict], table) -> list[str]:
    """The section as a markdown table (``table`` is report.table)."""
    if not rows:
        return []
    lines = ["", "## Phase A per chunk step (one layer, lambda max, grouped; `LOLA_MERGE`), us", ""]
    return lines + table(
        ["preset", "ctx", "steps", "merge", "phase A ms", "us / step", "target us / step", "same selection",
         "max |diff| vs persistent", "error"],
        [[r.get("preset", "-"), r.get("ctx"), r.get("steps"), r.get("merge", "-"), r.get("merge_ms"),
          r.get("merge_us_per_step"), r.get("target_us_per_step"), str(r.get("same_selection_as_persistent", "-")),
          r.get("max_abs_diff_vs_persistent"), r.get("error", r.get("skipped", ""))] for r in rows])
