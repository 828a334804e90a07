"""The report names every variant family -- full, LoLA base, LoLA, eviction by its baseline -- in sweep.md and in
the plot legends, on a fake sweep frame (no model)."""

from __future__ import annotations

import importlib

import pandas as pd
import pytest

from lola_bench.report import sweep_markdown
from lola_bench.report.sweep_tables import family_label
from lola_bench.sweep import SWEEP_COLUMNS

sp = importlib.import_module("lola_bench.report.sweep_plots")   # the package re-exports a function of that name

EVICTIONS = {"StreamingLLM": ("sink", 0), "H2O-style": ("attention", 64), "SnapKV-style": ("snapkv", 64),
             "key-norm": ("key_norm", 64), "random": ("random", 64)}


def family_frame() -> pd.DataFrame:
    rows = []
    for ctx in (512, 1024):
        def add(attn, lam, scorer, acc, fm="hedgehog-identity", ctx=ctx, **kw):
            rows.append({"cell_id": f"{len(rows):016x}", "suite": "ruler", "status": "ok", "model": "random:tiny",
                         "attn": attn, "window": None if attn == "full" else 32, "lambda": lam, "scorer": scorer,
                         "feature_map": fm, "task": "passkey", "ctx": ctx, "n": 2, "accuracy": acc,
                         "ttft_s": 0.01, "cache_mib": 0.1 + (lam or 0) / 100 if attn != "full" else 4.0,
                         "full_kv_mib": 4.0, "peak_mem_mib": 1.0, "mean_prompt_tokens": ctx - 10, **kw})
        add("full", None, None, 100.0)
        add("base", 0, None, 10.0)
        add("lola", 64, "sre", 60.0)
        for name, (scorer, lam) in EVICTIONS.items():
            add("evict", lam, scorer, 20.0 + len(name), fm=None)
    return pd.DataFrame(rows).reindex(columns=SWEEP_COLUMNS)


def test_family_labels():
    assert family_label("full") == "full attention"
    assert family_label("base", None, 0) == family_label("lola", "sre", 0) == "LoLA base (λ=0)"
    assert family_label("lola", "attention", 64) == "LoLA"
    assert family_label("evict", "sink", 0) == family_label("evict", "attention", 0) == "eviction: StreamingLLM"
    assert family_label("evict", "attention", 64) == "eviction: H2O-style"
    assert family_label("evict", "snapkv", 64) == "eviction: SnapKV-style"


def test_sweep_md_names_every_family():
    md = sweep_markdown(family_frame())
    variants = [ln.split("|")[1].strip() for ln in md.splitlines() if ln.startswith("| ") and "η=32" not in ln]
    expected = ["LoLA base (λ=0)", "LoLA λ=64", "eviction: StreamingLLM λ=0", "eviction: H2O-style λ=64",
                "eviction: SnapKV-style λ=64", "eviction: key-norm λ=64", "eviction: random λ=64", "full attention"]
    first = variants[:len(expected)]
    assert sorted(first) == sorted(expected)
    assert first[:2] == expected[:2] and first[-1] == "full attention"   # LoLA families first, full last
    # the H2O row holds the evict/attention accuracy, not LoLA's
    h2o = next(ln for ln in md.splitlines() if ln.startswith("| eviction: H2O-style λ=64 |"))
    assert f"{20.0 + len('H2O-style')}" in h2o


def _legends(monkeypatch, tmp_path):
    seen = {}

    def save(fig, path, plt):
        seen[path.name] = [t.get_text() for leg in fig.legends for t in leg.get_texts()] + \
            [ax.get_title() for ax in fig.axes if ax.get_visible()]
        plt.close(fig)
        return path

    monkeypatch.setattr(sp, "_save", save)
    sp.sweep_plots(family_frame(), tmp_path)
    return seen


def test_plot_legends_name_every_family(monkeypatch, tmp_path):
    seen = _legends(monkeypatch, tmp_path)
    pareto = seen["accuracy_vs_cache.png"]
    for label in ("full attention", "LoLA base (λ=0)", "LoLA, scorer sre", *(f"eviction: {n}" for n in EVICTIONS)):
        assert label in pareto, (label, pareto)
    ctx = seen["accuracy_vs_ctx.png"]       # one panel per family: eviction never drawn in a LoLA panel
    assert {"LoLA, scorer sre", "eviction: H2O-style", "eviction: SnapKV-style"} <= set(ctx)
    lam = seen["ttft_vs_lambda.png"]
    assert {"LoLA, scorer sre", "eviction: H2O-style", "eviction: key-norm"} <= set(lam)


def test_pareto_draws_eviction_with_its_own_markers(monkeypatch, tmp_path):
    markers = {}

    def save(fig, path, plt):
        if path.name == "accuracy_vs_cache.png":
            for h in fig.legends[0].legend_handles:
                markers[h.get_label()] = h.get_marker()
        plt.close(fig)
        return path

    monkeypatch.setattr(sp, "_save", save)
    sp.sweep_plots(family_frame(), tmp_path)
    lola = {markers["LoLA, scorer sre"], markers["LoLA base (λ=0)"]}
    evict = [markers[f"eviction: {n}"] for n in EVICTIONS]
    assert len(set(evict)) == len(evict) and not lola & set(evict)


def test_accuracy_plots_draw_wilson_bars_and_say_n(monkeypatch, tmp_path):
    """Issue #23: every accuracy point of the sweep plots carries its 95% Wilson interval, and each panel its n."""
    from matplotlib.axes import Axes

    from lola_bench.stats import wilson_interval

    bars, texts = {}, {}
    real = Axes.errorbar

    def spy(self, x, y, yerr=None, **kw):
        bars.setdefault(self.figure, []).append((list(x), list(y), [list(e) for e in yerr]))
        return real(self, x, y, yerr=yerr, **kw)

    def save(fig, path, plt):
        texts[path.name] = [t.get_text() for ax in fig.axes for t in ax.texts]
        bars[path.name] = bars.pop(fig, [])
        plt.close(fig)
        return path

    monkeypatch.setattr(Axes, "errorbar", spy)
    monkeypatch.setattr(sp, "_save", save)
    sp.sweep_plots(family_frame(), tmp_path)
    lo, hi = wilson_interval(2 * 0.6, 2)
    for name in ("accuracy_vs_cache.png", "accuracy_vs_ctx.png"):
        assert "n=2 per point" in texts[name], name
        got = [(y, e) for _, ys, errs in bars[name] for y, e in zip(ys, zip(*errs))]
        assert any(y == 60.0 and e == pytest.approx((60 - 100 * lo, 100 * hi - 60)) for y, e in got), name
        full_lo, _ = wilson_interval(2, 2)
        assert any(y == 100.0 and e[0] == pytest.approx(100 - 100 * full_lo) for y, e in got), name


def test_accuracy_with_ci_pools_the_tasks_samples():
    from lola_bench.stats import wilson_interval

    ok = pd.DataFrame({"attn": ["lola", "lola"], "task": ["a", "b"], "ctx": [512, 512], "n": [10, 30],
                       "accuracy": [50.0, 70.0]})
    d = sp.accuracy_with_ci(ok, ["attn", "ctx"], ["accuracy"])
    lo, hi = wilson_interval(0.6 * 40, 40)
    assert d["n_total"].tolist() == [40] and d["accuracy"].tolist() == [60.0]
    assert d["ci_low"].iloc[0] == pytest.approx(100 * lo) and d["ci_high"].iloc[0] == pytest.approx(100 * hi)


def test_prompt_end_eviction_is_named_as_the_published_method():
    """evict_at prompt_end (full prefill, then one compression) names H2O / SnapKV; boundary rows, and rows written
    before the column existed (NaN), keep the -style names; the other scorers say 'after prefill'."""
    from lola_bench.report.labels import run_variant_label

    assert family_label("evict", "snapkv", 64, "prompt_end") == "eviction: SnapKV"
    assert family_label("evict", "attention", 64, "prompt_end") == "eviction: H2O"
    assert family_label("evict", "key_norm", 64, "prompt_end") == "eviction: key-norm after prefill"
    assert family_label("evict", "sink", 0, "prompt_end") == "eviction: StreamingLLM after prefill"
    for at in ("boundary", None, float("nan")):
        assert family_label("evict", "snapkv", 64, at) == "eviction: SnapKV-style"
    row = {"attn": "evict", "window": 32, "lambda": 64, "scorer": "attention", "evict_at": "prompt_end"}
    assert run_variant_label(row, []) == "evict (η=32, λ=64, H2O)"
    assert run_variant_label({**row, "evict_at": None}, ["x"]) == "evict (η=32, λ=64, H2O-style, x)"


def _both_modes_frame() -> pd.DataFrame:
    df = family_frame()
    pe = df[df["attn"] == "evict"].copy()
    pe["evict_at"] = "prompt_end"
    pe["accuracy"] = pe["accuracy"] + 50.0
    pe["ttft_s"] = 0.05                             # every other row: 0.01
    pe["cell_id"] = [f"f{i:015x}" for i in range(len(pe))]
    return pd.concat([df, pe], ignore_index=True)   # the boundary rows have no evict_at (written before it)


def test_sweep_md_and_plots_keep_the_two_modes_apart(monkeypatch, tmp_path):
    md = sweep_markdown(_both_modes_frame())
    for name, acc in (("SnapKV-style", 20.0 + len("SnapKV-style")), ("SnapKV", 70.0 + len("SnapKV-style")),
                      ("H2O", 70.0 + len("H2O-style")), ("StreamingLLM after prefill", 70.0 + len("StreamingLLM"))):
        lam = 0 if "Streaming" in name else 64
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| eviction: {name} λ={lam} |"))
        assert f"{acc}" in line, (name, line)
    seen: dict = {}
    ttft_lines = []

    def save(fig, path, plt):
        seen[path.name] = [t.get_text() for leg in fig.legends for t in leg.get_texts()] + \
            [ax.get_title() for ax in fig.axes]
        if path.name == "ttft_vs_lambda.png":
            ttft_lines.extend(set(line.get_ydata()) for ax in fig.axes for line in ax.get_lines())
        plt.close(fig)
        return path

    monkeypatch.setattr(sp, "_save", save)
    sp.sweep_plots(_both_modes_frame(), tmp_path)
    for png in ("accuracy_vs_cache.png", "accuracy_vs_ctx.png", "ttft_vs_lambda.png"):
        assert {"eviction: SnapKV", "eviction: SnapKV-style", "eviction: H2O", "eviction: H2O-style"} <= \
            set(seen[png]), png
    assert {0.05} in ttft_lines and all(len(ys) == 1 for ys in ttft_lines), ttft_lines   # one mode per line


def test_a_runs_summary_names_every_family_and_keeps_variants_apart():
    """ruler's summary.csv / accuracy.png name each row by family with η and λ, and add the settings that differ
    within a family, so two LoLA scorers (or H2O-style and SnapKV-style) never share a name."""
    from lola_bench.report.labels import summary_variant_names

    df = pd.DataFrame([
        {"attn": "full", "window": None, "lambda": None, "scorer": None, "evict_at": None, "feature_map": None},
        {"attn": "lola", "window": 64, "lambda": 512, "scorer": "sre", "evict_at": None, "feature_map": "hedgehog"},
        {"attn": "lola", "window": 64, "lambda": 512, "scorer": "key_norm", "evict_at": None,
         "feature_map": "hedgehog"},
        {"attn": "base", "window": 64, "lambda": 0, "scorer": "sre", "evict_at": None, "feature_map": "hedgehog"},
        {"attn": "evict", "window": 64, "lambda": 0, "scorer": "sink", "evict_at": "boundary", "feature_map": None},
        {"attn": "evict", "window": 64, "lambda": 256, "scorer": "snapkv", "evict_at": "prompt_end",
         "feature_map": None}])
    names = summary_variant_names(df)
    assert names == ["full attention", "LoLA (η=64, λ=512, scorer=sre)", "LoLA (η=64, λ=512, scorer=key_norm)",
                     "LoLA base (λ=0) (η=64, λ=0)", "eviction: StreamingLLM (η=64, λ=0)",
                     "eviction: SnapKV (η=64, λ=256)"]


def test_the_exactness_note_speaks_of_eviction_as_eviction():
    from lola_bench.attention.config import LolaConfig
    from lola_bench.report import exactness_note

    lola, evict = LolaConfig(window=64, sparse=512), LolaConfig(window=64, sparse=0, sinks=4, fold=False, scorer="sink")
    assert "linear state" in exactness_note([lola]) and "eviction" not in exactness_note([lola])
    note = exactness_note([evict])
    assert note.startswith("KV eviction") and "folded" not in note and f"{evict.exact_len} tokens" in note
    assert exactness_note([None]) == "" and exactness_note([lola, evict]).count("tokens") == 2
