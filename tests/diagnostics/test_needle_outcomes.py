"""needle_outcomes: the diagnostics of answered and missed samples side by side (medians, the retrieval layer), in
the ruler run directory and in `report` over several runs."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from lola_bench.cli import app
from lola_bench.diagnostics.outcomes import needle_outcomes


def _pred(score, share, full, lola, lin, ctx=4096, scorer="sre"):
    return {"attn": "lola", "scorer": scorer, "task": "niah_single_2", "ctx": ctx, "score": score,
            "needle_exact_share": share, "needle_kept_layers": 0.5, "needle_mass_max": max(lola),
            "linear_mass_median": sorted(lin)[len(lin) // 2], "needle_mass_full": full, "needle_mass": lola,
            "linear_mass": lin}


PREDS = [
    _pred(100, [1.0, 0.5], full=[0.1, 0.6, 0.2], lola=[0.0, 0.5, 0.1], lin=[0.3, 0.1, 0.2]),
    _pred(100, [1.0, 1.0], full=[0.7, 0.1, 0.2], lola=[0.4, 0.0, 0.1], lin=[0.2, 0.3, 0.2]),
    _pred(0, [0.0, 0.0], full=[0.0, 0.1, 0.3], lola=[0.0, 0.0, 0.0], lin=[0.4, 0.5, 0.6]),
    {"attn": "full", "scorer": None, "task": "niah_single_2", "ctx": 4096, "score": 100},   # no diagnostics
]


def test_outcomes_split_answered_from_missed_and_read_the_retrieval_layer():
    df = needle_outcomes(PREDS).set_index("outcome")
    assert list(df.index) == ["answered", "missed"] and df.loc["answered", "n"] == 2 and df.loc["missed", "n"] == 1
    ans, miss = df.loc["answered"], df.loc["missed"]
    assert ans["exact_share"] == 0.875                     # medians of the per-sample means 0.75 and 1.0
    assert ans["retrieval_layer"] == 0.5                   # layers 1 and 0: the argmax of needle_mass_full
    assert (ans["needle_share_full"], ans["needle_share"], ans["linear_share"]) == pytest.approx((0.65, 0.45, 0.15))
    assert miss["retrieval_layer"] == 2 and miss["needle_share"] == 0.0 and miss["linear_share"] == 0.6
    assert needle_outcomes(PREDS[3:]).empty


def test_report_writes_the_outcomes_of_every_run(tmp_path):
    for name, preds in (("a", PREDS), ("b", [dict(p, scorer="sre+needle-pin") for p in PREDS[:2]])):
        d = tmp_path / name
        d.mkdir()
        pd.DataFrame([{"model": "m", "attn": "lola", "window": 64, "lambda": 512, "task": "niah_single_2",
                       "ctx": 4096, "n": 3, "accuracy": 66.7}]).to_csv(d / "summary.csv", index=False)
        (d / "config.json").write_text(json.dumps({"command": "ruler"}))
        (d / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    r = CliRunner().invoke(app, ["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    out = pd.read_csv(tmp_path / "c" / "needle_outcomes.csv")
    assert list(out["run"]) == ["a", "a", "b"] and list(out["outcome"]) == ["answered", "missed", "answered"]
    assert "retrieval layer" in (tmp_path / "c" / "needle_outcomes.md").read_text()
