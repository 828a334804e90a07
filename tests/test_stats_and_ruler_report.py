"""Accuracy uncertainty (Wilson interval) and `report` on RULER runs."""

import json
import math

import pandas as pd
import pytest
from typer.testing import CliRunner

from lola_bench.cli import app
from lola_bench.stats import wilson_interval


def _score_interval_roots(k, n, z=1.959963984540054):
    """Independent oracle: the Wilson interval is the set of p with (p_hat - p)^2 <= z^2 p (1 - p) / n, i.e. the
    roots of (1 + z^2/n) p^2 - (2 p_hat + z^2/n) p + p_hat^2 = 0 (solved with numpy, not the closed form)."""
    import numpy as np

    ph = k / n
    roots = np.roots([1 + z * z / n, -(2 * ph + z * z / n), ph * ph])
    return float(min(roots.real)), float(max(roots.real))


@pytest.mark.parametrize("k,n", [(0, 20), (19, 20), (20, 20), (5, 10), (1, 1), (7.5, 10), (313, 1000)])
def test_wilson_interval_solves_the_score_equation(k, n):
    lo, hi = _score_interval_roots(k, n)
    assert wilson_interval(k, n) == pytest.approx((max(lo, 0.0), min(hi, 1.0)), abs=1e-9)


def test_wilson_interval_properties():
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    lo, hi = wilson_interval(7.5, 10)        # partial credit: fractional successes
    assert 0 < lo < 0.75 < hi < 1
    assert wilson_interval(50, 100)[1] - wilson_interval(50, 100)[0] < wilson_interval(5, 10)[1] - \
        wilson_interval(5, 10)[0]            # more samples, narrower


def _ruler_run(d, rows):
    d.mkdir()
    cols = ["model", "attn", "window", "lambda", "task", "ctx", "n", "accuracy"]
    pd.DataFrame(rows, columns=cols).to_csv(d / "summary.csv", index=False)
    (d / "config.json").write_text(json.dumps({"command": "ruler", "provenance": {}}))
    return d


def test_report_compares_ruler_runs_side_by_side(tmp_path):
    a = _ruler_run(tmp_path / "a", [["m", "full", None, None, "passkey", 1024, 20, 95.0],
                                    ["m", "lola", 64, 512, "passkey", 1024, 20, 100.0]])
    b = _ruler_run(tmp_path / "b", [["m", "lola", 64, 128, "passkey", 1024, 10, 50.0]])
    out = tmp_path / "cmp"
    r = CliRunner().invoke(app, ["report", str(a), str(b), "--out", str(out)])
    assert r.exit_code == 0, r.output
    long = pd.read_csv(out / "comparison.csv")
    assert len(long) == 3 and set(long["run"]) == {"a", "b"}
    lola_a = long[(long.run == "a") & (long.variant.str.startswith("lola"))].iloc[0]
    assert lola_a["minus_full"] == 5.0 and lola_a["ci_high"] == 100.0
    assert long[long.run == "b"].iloc[0]["ci_low"] == pytest.approx(100 * wilson_interval(5, 10)[0])
    md = (out / "comparison.md").read_text()
    assert "95 [76, 99] (n=20)" in md and "a: lola (η=64, λ=512)" in md and "b: lola (η=64, λ=128)" in md


def test_report_refuses_mixed_run_kinds(tmp_path):
    a = _ruler_run(tmp_path / "a", [["m", "full", None, None, "passkey", 1024, 2, 50.0]])
    c = tmp_path / "c"
    c.mkdir()
    pd.DataFrame([{"model": "m", "attn": "full", "task": "piqa", "metric": "acc", "value": 0.5, "stderr": 0.1,
                   "n": 2}]).to_csv(c / "summary.csv", index=False)
    (c / "config.json").write_text(json.dumps({"command": "commonsense", "provenance": {}}))
    r = CliRunner().invoke(app, ["report", str(a), str(c), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "different kinds" in r.output


def test_report_names_the_settings_that_differ_and_shows_needle_kept(tmp_path):
    cols = ["model", "attn", "window", "lambda", "scorer", "gqa", "sinks", "task", "ctx", "n", "accuracy",
            "needle_kept"]

    def run(name, rows):
        d = tmp_path / name
        d.mkdir()
        pd.DataFrame(rows, columns=cols).to_csv(d / "summary.csv", index=False)
        (d / "config.json").write_text(json.dumps({"command": "ruler", "provenance": {}}))
        return d

    a = run("default", [["m", "full", None, None, None, None, None, "niah_single_2", 4096, 20, 100.0, None],
                        ["m", "lola", 64, 512, "sre", "grouped", 4, "niah_single_2", 4096, 20, 30.0, 5.0]])
    b = run("per-query-head", [["m", "lola", 64, 512, "sre", "expanded", 4, "niah_single_2", 4096, 20, 45.0, 25.0]])
    out = tmp_path / "cmp"
    r = CliRunner().invoke(app, ["report", str(a), str(b), "--out", str(out)])
    assert r.exit_code == 0, r.output
    md = (out / "comparison.md").read_text()
    assert "default: lola (η=64, λ=512, grouped)" in md and "per-query-head: lola (η=64, λ=512, expanded)" in md
    assert "sre" not in md.split("## One row")[0]          # same scorer everywhere: not named
    by_run = md.split("## One row per run and variant")[1]
    assert "| per-query-head | lola (η=64, λ=512, expanded) | 45 [" in by_run and "; kept 25%" in by_run
    assert "| default | full | 100 [" in by_run
    long = pd.read_csv(out / "comparison.csv")
    assert long.set_index("run").loc["per-query-head", "needle_kept"] == 25.0
