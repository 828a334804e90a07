"""accuracy_at_budget.png (sweep --budget-mib): one panel per context × budget, one bar per family with the mean over
the tasks every family of the panel finished, its pooled Wilson interval, λ and cache; the λ = 0 references below,
full attention as a line; families drawn in their own colours. The fake equal-memory frame of test_budget_tables."""

from __future__ import annotations

import importlib

import pytest

from lola_bench.report.budget_plot import panel_bars
from lola_bench.report.budget_tables import budget_panels
from lola_bench.report.family_style import family_look
from lola_bench.report.sweep_tables import ok_rows
from lola_bench.stats import wilson_interval
from tests.sweep.test_budget_tables import frame

sp = importlib.import_module("lola_bench.report.sweep_plots")


def bars_at(budget, skip=()):
    p = next(p for p in budget_panels(ok_rows(frame(skip))) if p.budget_mib == budget)
    bars, full = panel_bars(p)
    return {b["label"]: b for _, b in bars.iterrows()}, list(bars["label"]), full


def test_bars_are_the_families_means_with_their_lambda_cache_and_interval():
    by, order, full = bars_at(40.0)
    assert order == ["LoLA", "eviction: StreamingLLM", "eviction: SnapKV", "LoLA base (λ=0) (reference, no budget)",
                     "eviction: StreamingLLM (reference, no budget)"]
    lola = by["LoLA"]
    assert lola["accuracy"] == 45.0 and lola["lambda"] == "573" and lola["cache_mib"] == 40.0   # (40 + 50) / 2
    lo, hi = wilson_interval(0.45 * 20, 20)                    # two tasks of n = 10, pooled
    assert lola["ci_low"] == pytest.approx(100 * lo) and lola["ci_high"] == pytest.approx(100 * hi)
    assert by["eviction: SnapKV"]["accuracy"] == 10.5 and not by["eviction: SnapKV"]["reference"]
    assert by["LoLA base (λ=0) (reference, no budget)"]["reference"]
    assert full["accuracy"] == 90.5 and full["kv_mib"] == 87.0


def test_a_family_missing_a_task_narrows_every_bar_of_its_panel_to_the_common_tasks():
    by, _, full = bars_at(40.0, skip={("evict", "snapkv", "prompt_end", 40.0, "passkey")})
    assert by["LoLA"]["accuracy"] == 40.0 and by["eviction: SnapKV"]["accuracy"] == 10.0   # niah_single_1 only
    assert full["accuracy"] == 90.0
    assert bars_at(16.0, skip={("evict", "snapkv", "prompt_end", 40.0, "passkey")})[0]["LoLA"]["accuracy"] == 21.0


def test_families_look_apart():
    lola, base = family_look("lola", "sre", 512), family_look("base", None, 0)
    assert lola.color == base.color and lola.filled and not base.filled
    ev = {(s, at): family_look("evict", s, 64, at) for s in ("sink", "attention", "snapkv", "key_norm")
          for at in ("boundary", "prompt_end")}
    assert len({(look.color, look.marker) for (s, at), look in ev.items() if at == "boundary"}) == 4
    assert all(look.color != lola.color and look.marker != "o" for look in ev.values())
    for s in ("sink", "attention", "snapkv", "key_norm"):   # after a full prefill: the same look, hollow and hatched
        a, b = ev[s, "boundary"], ev[s, "prompt_end"]
        assert (a.color, a.marker) == (b.color, b.marker) and a.filled and not b.filled and b.hatch
    assert family_look("evict", "attention", 0) == family_look("evict", "sink", 64)      # λ = 0: StreamingLLM


def test_the_plot_is_written_only_for_budget_sweeps(tmp_path):
    from tests.sweep.test_families import family_frame

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    written = {p.name for p in sp.sweep_plots(frame(), tmp_path / "a")}
    assert "accuracy_at_budget.png" in written and (tmp_path / "a" / "accuracy_at_budget.png").stat().st_size > 0
    assert "accuracy_at_budget.png" not in {p.name for p in sp.sweep_plots(family_frame(), tmp_path / "b")}
