"""Issue #23: `report` handles speed and perplexity run directories too, several runs of one kind side by side."""

import pandas as pd
import pytest
from typer.testing import CliRunner

from lola_bench.cli import app

runner = CliRunner()


def run(*args):
    r = runner.invoke(app, [str(a) for a in args])
    return r


@pytest.fixture(scope="module")
def speed_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("speed")
    for name, ctx in (("a", "64,96"), ("b", "64")):
        r = run("speed", "--model", "random:tiny", "--attn", "full,lola", "--window", "16", "--lambda", "16",
                "--ctx", ctx, "--repeats", "1", "--decode-tokens", "1", "--out", base / name)
        assert r.exit_code == 0, r.output
    return base


def test_report_on_one_speed_run(speed_runs):
    r = run("report", speed_runs / "a")
    assert r.exit_code == 0, r.output
    long = pd.read_csv(speed_runs / "a" / "comparison.csv")
    summary = pd.read_csv(speed_runs / "a" / "summary.csv")
    assert len(long) == len(summary) and set(long["variant"]) == {"full", "lola (η=16, λ=16, hedgehog-identity, lola)"}
    assert long["ttft_s"].tolist() == summary["ttft_s"].tolist()
    md = (speed_runs / "a" / "comparison.md").read_text()
    assert "## TTFT (s, median)" in md and "## decode (ms per token, mean of the timed tokens" in md and "| 96 |" in md
    assert "## decode (ms per token over a whole chunk, merge included)" in md


def test_report_compares_several_speed_runs(speed_runs, tmp_path):
    r = run("report", speed_runs / "a", speed_runs / "b", "--out", tmp_path / "cmp")
    assert r.exit_code == 0, r.output
    long = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert sorted(set(long["run"])) == ["a", "b"] and len(long) == 4 + 2
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "a: full" in md and "b: lola (η=16, λ=16, hedgehog-identity, lola)" in md


def test_report_on_perplexity_runs(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(" ".join(f"word{i % 37}" for i in range(400)) + "\n")
    for name in ("p1", "p2"):
        r = run("perplexity", "--model", "random:tiny", "--attn", "full,lola", "--window", "8", "--lambda", "8",
                "--text", text, "--seq-len", "32", "--max-tokens", "96", "--out", tmp_path / name)
        assert r.exit_code == 0, r.output
    r = run("report", tmp_path / "p1", tmp_path / "p2", "--out", tmp_path / "cmp")
    assert r.exit_code == 0, r.output
    long = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    ppl = pd.read_csv(tmp_path / "p1" / "summary.csv")["perplexity"].tolist()
    got = long[long["run"] == "p1"]
    assert got["perplexity"].tolist() == ppl
    assert got["vs_full"].tolist() == pytest.approx([1.0, ppl[1] / ppl[0]])
    assert "p2: lola (η=8, λ=8, hedgehog-identity, lola)" in (tmp_path / "cmp" / "comparison.md").read_text()


def test_report_refuses_mixed_kinds_in_one_line(speed_runs, tmp_path):
    (tmp_path / "p").mkdir()
    pd.DataFrame({"model": ["m"], "attn": ["full"], "text": ["t"], "seq_len": [32], "max_tokens": [64],
                  "perplexity": [3.0]}).to_csv(tmp_path / "p" / "summary.csv", index=False)
    r = run("report", speed_runs / "a", tmp_path / "p", "--out", tmp_path / "cmp")
    assert r.exit_code != 0 and "different kinds (perplexity, speed)" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_ruler_accuracy_plot_has_wilson_bars_and_n(monkeypatch, tmp_path):
    """Issue #23: the ruler run's accuracy plot draws each point's 95% Wilson interval and names n."""
    from matplotlib.axes import Axes

    import lola_bench.report.ruler as rr
    from lola_bench.stats import wilson_interval

    calls, titles = [], []
    real = Axes.errorbar

    def spy(self, x, y, yerr=None, **kw):
        calls.append((list(y), [list(e) for e in yerr]))
        titles.append(self.get_title())
        return real(self, x, y, yerr=yerr, **kw)

    monkeypatch.setattr(Axes, "errorbar", spy)
    lo, hi = wilson_interval(3, 4)
    summary = pd.DataFrame({"attn": ["full", "lola"], "window": [None, 16], "lambda": [None, 16],
                            "task": ["passkey", "passkey"], "ctx": [256, 256], "n": [4, 4],
                            "accuracy": [100.0, 75.0]})
    (path,) = rr.accuracy_plot(summary, tmp_path)
    assert path.name == "accuracy.png" and path.stat().st_size > 0
    errs = {y[0]: (e[0][0], e[1][0]) for y, e in calls}
    assert errs[75.0] == pytest.approx((75 - 100 * lo, 100 * hi - 75))
    assert errs[100.0][0] == pytest.approx(100 - 100 * wilson_interval(4, 4)[0])


def test_ruler_run_writes_the_accuracy_plot(tmp_path):
    out = tmp_path / "r"
    r = run("ruler", "--model", "random:tiny", "--window", "16", "--lambda", "16", "--task", "passkey", "--ctx",
            "256,320", "--attn", "full", "--samples", "2", "--out", out)
    assert r.exit_code == 0, r.output
    assert (out / "accuracy.png").is_file() and (out / "heatmap_passkey_full.png").is_file()


def test_depth_heatmap_cells_say_n(monkeypatch, tmp_path):
    from matplotlib.axes import Axes

    import lola_bench.report.ruler as rr

    texts, real = [], Axes.text
    monkeypatch.setattr(Axes, "text", lambda self, x, y, s, *a, **k: (texts.append(s), real(self, x, y, s, *a, **k))[1])
    preds = [{"attn": "full", "task": "passkey", "ctx": c, "depth": d, "score": sc}
             for c in (256, 512) for d, sc in ((0, 100), (0, 0), (50, 100))]
    rr.depth_heatmaps(preds, tmp_path)
    assert "50\nn=2" in texts and "100\nn=1" in texts


def test_readme_names_the_new_flags_and_its_report_examples_exist():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    for word in ("HF_HUB_OFFLINE=1", "--log-samples", "HuggingFaceTB/SmolLM2-135M-Instruct", "ruler --data-dir",
                 "lm_eval/<variant>/results.json", "--resume/--no-resume"):
        assert word in readme, word
    for line in readme.splitlines():
        if line.startswith(("lola-bench report results/speed", "lola-bench report results/perplexity")):
            for arg in line.split("#")[0].split()[2:]:
                if arg.startswith("results/"):
                    assert (root / arg / "summary.csv").is_file() or (root / arg / "sweep.csv").is_file(), arg


def test_accuracy_plot_takes_an_interval_that_rounds_past_its_point(tmp_path):
    """A summary's stored interval can sit a rounding error inside its point (accuracy 100, high 99.99999999):
    the plot draws it as a zero-length bar instead of failing the run ('yerr' must not contain negative values)."""
    import lola_bench.report.ruler as rr

    summary = pd.DataFrame({"attn": ["full", "lola"], "window": [None, 16], "lambda": [None, 16],
                            "task": ["passkey", "passkey"], "ctx": [256, 256], "n": [3, 3],
                            "accuracy": [100.0, 0.0], "accuracy_ci_low": [43.8, 1e-12],
                            "accuracy_ci_high": [100.0 - 1e-12, 56.2]})
    (path,) = rr.accuracy_plot(summary, tmp_path)
    assert path.stat().st_size > 0


def test_sweep_error_bars_take_an_interval_that_rounds_past_its_point():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lola_bench.report.sweep_plots import _error_bars

    fig, ax = plt.subplots()
    _error_bars(ax, [1, 2], [100.0, 0.0], [43.8, 1e-12], [100.0 - 1e-12, 56.2], "C0")
    plt.close(fig)
