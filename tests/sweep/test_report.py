"""Sweep report: Pareto frontier, sweep.md tables and PNG plots from CSV alone, merged re-rendering."""

from __future__ import annotations

import itertools
import json
import math

import pandas as pd
import pytest

from lola_bench.errors import UserError
from lola_bench.report import (
    pareto_frontier,
    render_report,
    render_sweep_report,
    sweep_markdown,
)
from lola_bench.sweep import SWEEP_COLUMNS

PNG = b"\x89PNG\r\n\x1a\n"


def test_pareto_frontier_hand_example():
    #        A   B   C   D   E   F    G (= E)  H (NaN)
    x = [1, 2, 2, 3, 4, 0.5, 4, float("nan")]
    y = [10, 30, 20, 30, 50, 5, 50, 90]
    assert pareto_frontier(x, y) == [True, True, False, False, True, True, True, False]
    assert pareto_frontier([], []) == []
    assert pareto_frontier([1.0], [0.0]) == [True]


def sweep_frame() -> pd.DataFrame:
    """A small sweep: 2 ctx x 2 tasks x (full + base per eta + 2 scorers x 2 lambdas x 2 etas), one failure."""
    rows, n = [], 0

    def add(**kw):
        nonlocal n
        n += 1
        rows.append({"cell_id": f"{n:016x}", "suite": "ruler", "status": "ok", "model": "random:tiny",
                     "feature_map": "hedgehog-identity", "n": 2, "device": "CPU (2 cores)", "peak_mem_mib": 5.0,
                     "decode_ms_per_token": 3.0, "full_kv_mib": kw["ctx"] / 256, **kw})

    for ctx, task in itertools.product((512, 1024), ("niah_single_1", "vt")):
        add(attn="full", window=None, **{"lambda": None}, scorer=None, task=task, ctx=ctx, accuracy=100.0,
            ttft_s=0.02 * ctx / 512, cache_mib=ctx / 256, mean_prompt_tokens=ctx - 100)
        for eta in (16, 32):
            add(attn="base", window=eta, **{"lambda": 0}, scorer=None, task=task, ctx=ctx, accuracy=10.0,
                ttft_s=0.03, cache_mib=0.2 + eta / 100, mean_prompt_tokens=ctx - 100)
            for scorer, lam in itertools.product(("sre", "random"), (16, 64)):
                acc = min(100.0, lam * (1.5 if scorer == "sre" else 1.0) * eta / 32)
                add(attn="lola", window=eta, **{"lambda": lam}, scorer=scorer, task=task, ctx=ctx, accuracy=acc,
                    ttft_s=0.03 + lam / 1000, cache_mib=0.2 + eta / 100 + lam / 50, mean_prompt_tokens=ctx - 100)
    rows.append({"cell_id": "f" * 16, "suite": "ruler", "status": "oom", "error": "OutOfMemoryError: CUDA out of "
                 "memory", "model": "random:tiny", "attn": "lola", "window": 64, "lambda": 512, "scorer": "sre",
                 "task": "vt", "ctx": 1024})
    return pd.DataFrame(rows).reindex(columns=SWEEP_COLUMNS)


def test_render_sweep_report_writes_tables_and_plots(tmp_path):
    df = sweep_frame()
    paths = render_sweep_report(df, tmp_path)
    names = {p.name for p in paths}
    assert {"sweep.md", "accuracy_vs_cache.png", "ttft_vs_lambda.png", "memory_vs_lambda.png",
            "accuracy_vs_ctx.png"} <= names
    for p in paths:
        assert p.is_file() and p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == PNG and p.stat().st_size > 10_000
    md = (tmp_path / "sweep.md").read_text()
    assert "LoLA is exactly full softmax attention until" in md and "η=32, λ=64: 128 tokens" in md  # (lambda + 2 eta)
    assert "### niah_single_1, ctx 512" in md and "### mean over 2 tasks, ctx 1024" in md
    assert "| variant | η=16 | η=32 |" in md
    # lambda x eta pivot: sre, lambda=64, eta=16 -> min(100, 64 * 1.5 * 16 / 32) = 48; full row; failures
    line = next(ln for ln in md.splitlines() if ln.startswith("| LoLA sre λ=64 |"))
    assert line.split("|")[2].strip() == "48.0"
    assert any(ln.startswith("| full attention | 100.0 | 100.0 |") for ln in md.splitlines())
    assert any(ln.startswith("| LoLA base (λ=0) | 10.0 | 10.0 |") for ln in md.splitlines())
    assert "## Failed cells" in md and "OutOfMemoryError" in md
    assert "TTFT" in md and "MiB" in md


def test_short_prompts_are_flagged():
    df = sweep_frame()
    assert "shorter than their exact span" not in sweep_markdown(df)
    df.loc[df["attn"] == "lola", "mean_prompt_tokens"] = 10
    assert "shorter than their exact span" in sweep_markdown(df)


def test_decode_latency_table_says_which_decode_paths_it_mixes():
    df = sweep_frame()
    assert "Decode path: eager (one forward per token)." in sweep_markdown(df)   # before the column: eager
    df["decode_impl"] = df["decode_impl"].astype(object)
    df.loc[df["ctx"] == 512, "decode_impl"] = "eager (one forward per token)"
    md = sweep_markdown(df)
    assert "Decode path: eager (one forward per token)." in md and "differ between cells" not in md
    df["decode_impl"] = "eager (one forward per token)"
    df.loc[df["attn"] == "lola", "decode_impl"] = "static cache, CUDA graph"
    md = sweep_markdown(df)
    assert "**Decode paths differ between cells:** static cache, CUDA graph (32 cells); eager (one forward per " \
           "token) (12 cells)" in md
    # a graphed cell some of whose samples ended in the warm-up, and a row without a decode latency: no new path
    df.loc[df["attn"] == "base", "decode_impl"] = \
        "static cache, CUDA graph; static cache, eager (generation ended during warm-up)"
    df.loc[df["attn"] == "full", ["decode_impl", "decode_ms_per_token"]] = [None, float("nan")]
    md = sweep_markdown(df)
    assert "Decode path: static cache, CUDA graph." in md, md


def test_ttft_and_memory_tables_say_where_the_prefill_head_ran():
    df = sweep_frame()
    assert sweep_markdown(df).count("Prefill output head on: every position.") == 2     # TTFT and peak memory
    df["prefill_logits"] = "last position"
    assert sweep_markdown(df).count("Prefill output head on: last position.") == 2
    df.loc[df["attn"] == "full", "prefill_logits"] = None
    md = sweep_markdown(df)
    assert md.count("**The prefill's output head differs between cells:** last position (40 cells); every position "
                    "(4 cells)") == 2


def test_render_report_from_csv_alone_and_merged(tmp_path):
    df = sweep_frame()
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    df.iloc[:20].to_csv(a / "sweep.csv", index=False)
    df.iloc[15:].to_csv(b / "sweep.csv", index=False)           # 5 cells in both: deduplicated
    single = render_report([a])
    assert (a / "sweep.md").is_file() and any(p.suffix == ".png" for p in single)
    with pytest.raises(UserError):
        render_report([a, b])                                    # several inputs need an output directory
    out = tmp_path / "merged"
    paths = render_report([a, b], out)
    merged = pd.read_csv(out / "sweep.csv")
    assert len(merged) == len(df) and merged["cell_id"].is_unique
    assert out / "sweep.md" in paths
    with pytest.raises(UserError):
        render_report([tmp_path / "missing"])


def test_commonsense_rows_render_tables_without_plots(tmp_path):
    rows = [{"cell_id": f"{i:016x}", "suite": "commonsense", "status": "ok", "model": "m", "attn": attn,
             "window": w, "lambda": lam, "scorer": sc, "feature_map": None if attn == "full" else "elu",
             "task": "piqa", "ctx": math.nan, "accuracy": acc, "n": 10}
            for i, (attn, w, lam, sc, acc) in enumerate([("full", None, None, None, 70.0), ("base", 64, 0, None, 60.0),
                                                         ("lola", 64, 512, "sre", 65.0)])]
    paths = render_sweep_report(pd.DataFrame(rows), tmp_path)
    assert [p.name for p in paths] == ["sweep.md"]
    md = paths[0].read_text()
    assert "## commonsense: accuracy (%) by λ × η" in md and "| LoLA λ=512 | 65.0 |" in md


def _cs_summary(attn, values, n=100, window=None, lam=None, sinks=None):
    rows = [{"model": "m", "attn": attn, "task": t, "metric": m, "value": v, "stderr": 0.01, "n": n,
             "num_fewshot": 0, "window": window, "lambda": lam, "sinks": sinks, "scorer": None, "feature_map": None,
             "device": "cpu"} for (t, m), v in values.items()]
    return pd.DataFrame(rows)


def test_commonsense_comparison_side_by_side(tmp_path):
    from lola_bench.report import commonsense_comparison, render_report

    vals = {("piqa", "acc"): 0.6, ("piqa", "acc_norm"): 0.62, ("winogrande", "acc"): 0.5}
    full = _cs_summary("full", vals)
    base = _cs_summary("base", {k: v - 0.1 for k, v in vals.items()}, window=64, lam=0, sinks=4)
    lola = _cs_summary("lola", {k: v - 0.01 for k, v in vals.items()}, n=50, window=64, lam=512, sinks=4)
    t = commonsense_comparison(pd.concat([lola, base, full], ignore_index=True))
    assert t.columns[:5].tolist() == ["task", "metric", "n", "full", "full ±"]
    assert "base (η=64, λ=0, sinks=4)" in t.columns and "lola (η=64, λ=512, sinks=4) − full" in t.columns
    assert t[["task", "metric"]].values.tolist() == [["piqa", "acc"], ["piqa", "acc_norm"], ["winogrande", "acc"]]
    assert t["base (η=64, λ=0, sinks=4) − full"].round(6).tolist() == [-0.1, -0.1, -0.1]
    assert t["lola (η=64, λ=512, sinks=4) − full"].isna().all()  # other items (n differs): no difference shown
    with pytest.raises(ValueError, match="twice"):
        commonsense_comparison(pd.concat([full, full]))

    dirs = []
    for name, df in [("full", full), ("base", base)]:
        d = tmp_path / name
        d.mkdir()
        df.to_csv(d / "summary.csv", index=False)
        dirs.append(d)
    with pytest.raises(UserError, match="--out"):
        render_report(dirs)
    paths = render_report(dirs, tmp_path / "cmp")
    assert [p.name for p in paths] == ["comparison.csv", "comparison.md"]
    cfg = json.loads((tmp_path / "cmp" / "config.json").read_text())
    assert cfg["sources"] == [str(d) for d in dirs] and cfg["provenance"]["git"]
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| piqa | acc | 100 | 0.6 | 0.01 | 0.5 | 0.01 | -0.1 |" in md and str(dirs[0]) in md


def test_commonsense_comparison_survives_missing_stderr_and_rows():
    """lm-eval reports stderr 'N/A' (NaN here) for one-item tasks; a task missing in one variant stays a row."""
    from lola_bench.report import commonsense_comparison

    full = _cs_summary("full", {("piqa", "acc"): 1.0, ("arc_easy", "acc"): 0.0}, n=1)
    full["stderr"] = float("nan")
    base = _cs_summary("base", {("piqa", "acc"): 0.0}, n=1, window=8, lam=0)
    base["stderr"] = float("nan")
    base["beyond_exact_span"] = 0.5
    t = commonsense_comparison(pd.concat([full, base], ignore_index=True))
    assert t[["task", "metric"]].values.tolist() == [["piqa", "acc"], ["arc_easy", "acc"]]
    assert t["full ±"].isna().all() and t["base (η=8, λ=0) − full"].tolist()[0] == -1.0
    assert math.isnan(t["base (η=8, λ=0)"].tolist()[1]) and t["base (η=8, λ=0) beyond exact span"].tolist()[0] == 0.5


def test_mean_over_tasks_uses_only_tasks_every_variant_finished():
    """A sweep in progress: full attention has finished a task the others have not; the mean must not mix them."""
    from lola_bench.report.sweep_tables import sweep_markdown

    rows = []
    for attn, lam, accs in (("full", None, {"a": 100.0, "b": 50.0, "c": 0.0}), ("lola", 512, {"a": 80.0, "b": 40.0})):
        for task, acc in accs.items():
            rows.append({"cell_id": f"{attn}{task}", "suite": "ruler", "status": "ok", "model": "m", "attn": attn,
                         "window": 64 if lam else None, "lambda": lam, "scorer": "sre" if lam else None,
                         "feature_map": "hedgehog" if lam else None, "task": task, "ctx": 1024, "n": 10,
                         "accuracy": acc})
    md = sweep_markdown(pd.DataFrame(rows))
    assert "### mean over 2 tasks (those every variant finished), ctx 1024" in md
    block = md.split("### mean over 2 tasks")[1].split("###")[0]
    assert "| 75.0 |" in block and "| 60.0 |" in block      # full: (100 + 50) / 2, not (100 + 50 + 0) / 3
