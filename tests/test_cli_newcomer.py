"""Issue #23 (a newcomer's first hour): resumable ruler, --dry-run, device-sized defaults, list syntax, one accuracy
scale with intervals, integers as integers, the training-free notice, --version, --kernels after the command."""


import json
import os

import pandas as pd
import pytest
from typer.testing import CliRunner

from lola_bench.cli import app

runner = CliRunner()
TINY = ["--model", "random:tiny", "--window", "16", "--lambda", "16", "--task", "passkey"]


def run(*args):
    return runner.invoke(app, list(args))


def test_ruler_resumes_the_cells_a_killed_run_finished(tmp_path, monkeypatch):
    import lola_bench.evals.ruler_bench as rb

    real, calls = rb.greedy_generate, []

    def dying(*a, **kw):                       # the warm-up and the first two cells' samples, then the run dies
        calls.append(1)
        if len(calls) > 4:
            raise KeyboardInterrupt
        return real(*a, **kw)

    out = tmp_path / "run"
    args = ["ruler", *TINY, "--ctx", "256,320", "--attn", "full,lola", "--samples", "1", "--out", str(out)]
    monkeypatch.setattr(rb, "greedy_generate", dying)
    r = run(*args)
    assert r.exit_code != 0 and not out.exists(), r.output
    store = tmp_path / ".run.resume"
    assert len(list(store.glob("ruler-*.json"))) == 2, "the finished (variant, task, ctx) cells are kept"
    calls.clear()
    monkeypatch.setattr(rb, "greedy_generate", lambda *a, **kw: (calls.append(1), real(*a, **kw))[1])
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert "reused 2 finished cell(s)" in r.output
    assert len(calls) == 1 + 2, "one warm-up and the two unfinished cells only"
    df = pd.read_csv(out / "summary.csv")
    assert list(zip(df.attn, df.ctx)) == [("full", 256), ("full", 320), ("lola", 256), ("lola", 320)]
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 4
    assert not store.exists(), "the store is removed once the run directory is written"


def test_ruler_no_resume_reruns_everything(tmp_path, monkeypatch):
    import lola_bench.evals.ruler_bench as rb
    from lola_bench.records import ResumeStore

    out = tmp_path / "run"
    store = ResumeStore(out)
    store.save("ruler-full-passkey-256", {"stale": True}, {"row": {}, "predictions": []})
    r = run("ruler", *TINY, "--ctx", "256", "--attn", "full", "--samples", "1", "--out", str(out), "--no-resume")
    assert r.exit_code == 0, r.output and "reused" not in r.output
    assert not store.path.exists()
    del rb


def test_ruler_dry_run_loads_no_weights(tmp_path, monkeypatch):
    import lola_bench.models.loading as loading

    def boom(*a, **kw):
        raise AssertionError("dry run loaded a model")

    monkeypatch.setattr(loading, "load_model", boom)
    out = tmp_path / "run"
    r = run("ruler", *TINY, "--ctx", "256", "--ctx", "512", "--attn", "full,lola", "--out", str(out), "--dry-run",
            "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "2 variant(s) x 1 task(s) x 2 context(s) = 4 cell(s), 10 sample(s)" in r.output
    assert "estimated run time" in r.output and "estimate" in r.output
    assert "decode: eager (--decode-mode auto)" in r.output                # auto on CPU
    assert not out.exists()
    r = run("ruler", *TINY, "--ctx", "256", "--out", str(out), "--dry-run", "--device", "cpu", "--decode-mode",
            "graphed")
    assert "decode: static cache, one step captured as a CUDA graph (eagerly off CUDA) (--decode-mode graphed)" \
        in r.output, r.output


def test_ruler_samples_default_is_device_sized_and_shown_in_help():
    assert "auto: 10 on CPU, 100 on GPU" in help_text("ruler")


def help_text(*cmd) -> str:
    """--help of a command as one line of words (rich's box and wrapping removed)."""
    r = runner.invoke(app, [*cmd, "--help"], env={"COLUMNS": "400"})
    assert r.exit_code == 0, r.output
    return " ".join(r.output.replace("│", " ").split())


def test_list_flags_accept_commas_and_repeats_alike(tmp_path):
    """The same plan from --ctx 256,512 --task passkey,vt --attn full,lola and from the repeated flags."""
    def plan(*args):
        r = run("ruler", "--model", "random:tiny", "--window", "16", "--lambda", "16", "--samples", "1", *args,
                "--dry-run", "--out", str(tmp_path / "x"))
        assert r.exit_code == 0, r.output
        return r.output

    commas = plan("--ctx", "256,512", "--task", "passkey,vt", "--attn", "full,lola")
    repeats = plan("--ctx", "256", "--ctx", "512", "--task", "passkey", "--task", "vt", "--attn", "full", "--attn",
                   "lola")
    mixed = plan("--ctx", "256", "--ctx", "512", "--task", "passkey,vt", "--attn", "full,lola")
    assert commas == repeats == mixed
    assert "2 variant(s) x 2 task(s) x 2 context(s)" in commas and "contexts: 256, 512" in commas
    assert "tasks: passkey, vt" in commas


@pytest.mark.parametrize("cmd", ["ruler", "speed"])
def test_bad_integer_list_names_the_flag(tmp_path, cmd):
    r = run(cmd, "--model", "random:tiny", "--ctx", "256,abc", "--out", str(tmp_path / "x"))
    assert r.exit_code == 2 and "--ctx: expected integers" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x").exists()


def test_helper_and_help_types():
    from lola_bench.cli.options import int_list, split_list

    assert split_list(["a,b", " c ", ""]) == ("a", "b", "c")
    assert int_list("--ctx", ["512,1024", "2048"]) == (512, 1024, 2048)
    for cmd in ("ruler", "speed", "sweep"):
        assert "--ctx INTEGER[,INTEGER...]" in help_text(cmd), cmd
    assert "--task,--tasks" in help_text("commonsense").replace(", ", ",")


def test_commonsense_task_and_tasks_are_one_flag(tmp_path):
    for flag in ("--task", "--tasks"):
        r = run("commonsense", "--model", "random:tiny", flag, "piqa,nope", "--out", str(tmp_path / "x"))
        assert r.exit_code == 2 and "nope" in r.output, r.output


def test_ruler_rows_carry_wilson_intervals_integers_and_the_checkpoint(tmp_path):
    from lola_bench.stats import wilson_interval

    out = tmp_path / "run"
    r = run("ruler", *TINY, "--ctx", "256", "--attn", "full,lola", "--samples", "2", "--out", str(out))
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out / "summary.csv")
    for row in df.itertuples():
        low, high = wilson_interval(row.accuracy / 100 * row.n, row.n)
        assert row.accuracy_ci_low == pytest.approx(100 * low) and row.accuracy_ci_high == pytest.approx(100 * high)
        assert row.accuracy_ci_low <= row.accuracy <= row.accuracy_ci_high
    import csv

    header, *rows = list(csv.reader((out / "summary.csv").read_text().splitlines()))   # the raw text of each cell
    full, lola = (dict(zip(header, r)) for r in rows[:2])
    assert (lola["window"], lola["lambda"], lola["sinks"], lola["chunk"], lola["n"], lola["ctx"]) == (
        "16", "16", "0", "16", "2", "256"), "integers written as integers"
    assert full["window"] == "" and full["checkpoint"] == "", "empty stays empty"
    assert lola["checkpoint"] == "training-free"
    assert (full["variant"], lola["variant"]) == ("full attention", "LoLA (η=16, λ=16)")   # the family, named
    assert "None" not in (out / "summary.md").read_text() and "nan" not in (out / "summary.md").read_text()


def test_training_free_notice_once_per_run(tmp_path):
    r = run("ruler", *TINY, "--ctx", "256", "--attn", "full,base,lola", "--samples", "1", "--out",
            str(tmp_path / "a"))
    assert r.exit_code == 0, r.output
    assert r.output.count("TRAINING-FREE") == 1, r.output
    r = run("ruler", *TINY, "--ctx", "256", "--attn", "full", "--samples", "1", "--out", str(tmp_path / "b"))
    assert r.exit_code == 0 and "TRAINING-FREE" not in r.output


def test_notice_when_settings_differ_from_the_checkpoint():
    from lola_bench.cli.notices import checkpoint_notice
    from lola_bench.models.checkpoint import shipped_checkpoint
    from lola_bench.runs import resolve_variants
    from lola_bench.settings import LolaFlags, ModelSettings

    ckpt = shipped_checkpoint("smollm2-135m")
    if ckpt is None:
        pytest.skip("no shipped checkpoint")
    model = ModelSettings("smollm2-135m")
    ck, same = resolve_variants(("lola",), LolaFlags(), model)
    assert ck and checkpoint_notice(ck, same) is None, "the checkpoint's own settings: no notice"
    _, other = resolve_variants(("lola",), LolaFlags(window=128, combine="lola"), model)
    line = checkpoint_notice(ck, other)
    assert "window 128 (trained with 64)" in line and "combine lola (trained with calibrated)" in line


def test_version():
    from lola_bench import __version__

    r = run("--version")
    assert r.exit_code == 0 and r.output.strip() == f"lola-bench {__version__}"


def test_kernels_after_the_command_overrides_the_root_flag(tmp_path):
    out = tmp_path / "run"
    r = run("--kernels", "triton", "ruler", *TINY, "--ctx", "256", "--attn", "lola", "--samples", "1", "--kernels",
            "torch", "--out", str(out))
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["attention"][0]["kernels"] == "torch"
    r = run("ruler", *TINY, "--kernels", "bogus", "--dry-run")
    assert r.exit_code == 2 and "--kernels" in r.output and "'bogus' is not one of" in r.output
    assert len(r.output.strip().splitlines()) == 1


@pytest.mark.parametrize("verbose", [False, True])
def test_third_party_chatter_silenced_unless_verbose(tmp_path, monkeypatch, verbose):
    import logging

    for var in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE"):
        monkeypatch.delenv(var, raising=False)
    for name in ("lm_eval", "transformers"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
    r = run(*(["--verbose"] if verbose else []), "ruler", *TINY, "--ctx", "256", "--dry-run")
    assert r.exit_code == 0, r.output
    quiet = not verbose
    assert (logging.getLogger("lm_eval").level == logging.ERROR) == quiet
    assert (os.environ.get("TRANSFORMERS_VERBOSITY") == "error") == quiet
    assert (os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == "1") == quiet


@pytest.mark.parametrize("cmd", [["ruler", *TINY, "--ctx", "256"], ["speed", "--model", "random:tiny"],
                                 ["info"]])
def test_device_cuda_index_without_cuda_is_one_line(tmp_path, monkeypatch, cmd):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = run(*cmd, "--device", "cuda:0", *([] if cmd == ["info"] else ["--out", str(tmp_path / "o")]))
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "cuda:0" in lines[0] and "no CUDA device" in lines[0], r.output
    assert not (tmp_path / "o").exists()


def test_resolve_device_accepts_existing_cuda_indices_only(monkeypatch):
    import torch

    from lola_bench.errors import UserError
    from lola_bench.models.loading import resolve_device, resolve_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == "cuda:1"
    assert resolve_dtype("auto", "cuda:1") == torch.bfloat16
    with pytest.raises(UserError, match="no such CUDA device; this machine has 2"):
        resolve_device("cuda:2")
    for bad in ("cuda:x", "cuda:", "gpu:0"):
        with pytest.raises(UserError, match="unknown --device"):
            resolve_device(bad)


def test_sweep_hashes_cuda_index_as_the_device_kind():
    from lola_bench.sweep.grid import _resolved_device

    class Spec:
        device, dtype = "cuda:1", "auto"

    assert _resolved_device(Spec()) == ("cuda", "bfloat16")


def _help_choices():
    from lola_bench.attention.config import COMBINES, FEATURE_MAPS, GQA_MODES, SCORERS
    from lola_bench.settings import ATTN_MODES, KERNEL_MODES, PRESETS
    from lola_bench.sweep.grid import SUITES

    return {"--combine": COMBINES, "--gqa": GQA_MODES, "--scorer": SCORERS, "--feature-map": FEATURE_MAPS,
            "--attn": ATTN_MODES, "--preset": tuple(PRESETS), "--device": ("auto", "cpu", "cuda", "cuda:N"),
            "--dtype": ("auto", "float32", "bfloat16", "float16"), "--kernels": KERNEL_MODES, "--suite": SUITES}


@pytest.mark.parametrize("cmd", ["ruler", "commonsense", "speed", "perplexity", "sweep"])
def test_help_shows_the_choices_of_every_enumerated_flag(cmd):
    """Each enumerated flag's own --help entry (its rows in the rendered table) names every choice."""
    import re

    r = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"}, terminal_width=400)
    assert r.exit_code == 0, r.output
    rows = [ln for ln in r.output.splitlines() if ln.startswith("│")]
    entries, current = {}, None                   # flag -> its rendered text (name, metavar, help, continuation)
    for ln in rows:
        m = re.match(r"│\s+(--[a-z-]+)\b", ln)
        if m:
            current = m.group(1)
            entries[current] = ln
        elif current:
            entries[current] += " " + ln.strip("│ ")
    checked = 0
    for flag, choices in _help_choices().items():
        if flag not in entries:
            continue
        checked += 1
        for choice in choices:
            assert re.search(rf"(?<![\w-]){re.escape(choice)}(?![\w-])", entries[flag]), \
                f"{cmd} --help: {flag} does not show the choice {choice!r}: {entries[flag]}"
    assert checked >= 5, sorted(entries)


def test_linearize_defaults_are_the_shipped_checkpoints_recipe(tmp_path, monkeypatch):
    """No flags: --seq-len 4096, --sinks 4, --combine calibrated, calibration on (as data/smollm2-135m-lola);
    --no-calibrate skips it. The shipped lola.json is the reference."""
    import lola_bench.models.linearize as lin
    from lola_bench.paths import PACKAGE_DIR

    shipped = json.loads((PACKAGE_DIR / "data" / "smollm2-135m-lola" / "lola.json").read_text())
    seen = []
    monkeypatch.setattr(lin, "linearize", lambda loaded, paths, **kw: seen.append(kw) or {})
    (tmp_path / "train.txt").write_text("some training text " * 50)
    base = ["linearize", "--model", "random:tiny", "--data", str(tmp_path / "train.txt"), "--tokens", "5000",
            "--out", str(tmp_path / "ck")]
    r = run(*base)
    assert r.exit_code == 0, r.output
    kw = seen[-1]
    assert (kw["seq_len"], kw["sinks"], kw["combine"], kw["window"], kw["calibrate"]) == \
        (shipped["seq_len"], shipped["sinks"], shipped["combine"], shipped["window"], True)
    assert run(*base, "--no-calibrate").exit_code == 0 and seen[-1]["calibrate"] is False
    h = runner.invoke(app, ["linearize", "--help"], terminal_width=300, env={"COLUMNS": "300"}).output
    assert "--no-calibrate" in h and "recipe of the shipped checkpoint" in h


def test_no_notice_for_lolcats_factors_under_the_lola_formula(monkeypatch):
    """The authors evaluate LoLCATs-distilled files with the LoLA formula: that pairing is not 'untrained settings'."""
    from lola_bench.attention.config import LolaConfig
    from lola_bench.cli import notices
    from lola_bench.models import checkpoint
    from lola_bench.settings import AttentionSettings

    monkeypatch.setattr(checkpoint, "read_meta", lambda _: {"trained_combine": "lolcats"})
    monkeypatch.setattr(checkpoint, "checkpoint_label", lambda c: c)
    lola = AttentionSettings.build("lola", LolaConfig(window=64, sparse=64, combine="lola", feature_map="hedgehog"))
    assert notices.checkpoint_notice("distill.pt", [lola]) is None
    gated = AttentionSettings.build("lola", LolaConfig(window=64, sparse=64, combine="gated", feature_map="hedgehog"))
    assert "combine gated (trained with lolcats)" in notices.checkpoint_notice("distill.pt", [gated])


# ---------------------------------------------------------------------------------------------- issue #23, part 3


def test_ruler_rejects_every_too_short_pair_in_one_line_before_loading(tmp_path, monkeypatch):
    import lola_bench.models.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the model loaded before the check"))
    out = tmp_path / "run"
    r = run("ruler", "--model", "random:tiny", "--task", "vt,cwe,passkey", "--ctx", "512,768", "--attn", "full",
            "--samples", "1", "--out", str(out))
    assert r.exit_code == 2, r.output
    line = " ".join(r.output.split())
    assert "3 (task, ctx) pair(s) cannot run: vt at 512 (" in line and "cwe at 512 (" in line
    assert "cwe at 768 (" in line and "passkey at" not in line and "vt at 768" not in line
    assert len(r.output.strip().splitlines()) == 1
    assert not out.exists()


def test_ruler_data_dir_is_where_the_essays_come_from(tmp_path):
    empty = tmp_path / "mirror"
    empty.mkdir()
    args = ["ruler", "--model", "random:tiny", "--task", "niah_single_2", "--ctx", "512", "--attn", "full",
            "--samples", "1", "--dry-run", "--out", str(tmp_path / "x")]
    r = run(*args, "--data-dir", str(empty))
    assert r.exit_code == 2 and "niah_single_2 unavailable" in r.output, r.output   # no fallback to another mirror
    essays = next(p for p in (os.environ.get("LOLA_BENCH_DATA"), "../shared/data") if p and os.path.isfile(
        os.path.join(p, "ruler_essay", "PaulGrahamEssays.json")))
    (empty / "ruler_essay").mkdir()
    (empty / "ruler_essay" / "PaulGrahamEssays.json").symlink_to(
        os.path.abspath(os.path.join(essays, "ruler_essay", "PaulGrahamEssays.json")))
    r = run(*args, "--data-dir", str(empty))
    assert r.exit_code == 0, r.output
    r = run(*args, "--data-dir", str(tmp_path / "nope"))
    assert r.exit_code == 2 and "--data-dir" in r.output and "does not exist" in r.output


@pytest.mark.parametrize("cmd", ["ruler", "commonsense", "sweep", "linearize"])
def test_resume_flags_are_the_same_everywhere(cmd):
    assert "--resume --no-resume" in help_text(cmd), cmd


def test_perplexity_seq_len_is_not_called_a_window():
    h = help_text("perplexity")
    seq = h[h.index("--seq-len"):h.index("--seq-len") + 200]
    assert "window length" not in seq.lower() and "non-overlapping" in seq


def test_sweep_no_resume_refuses_finished_cells(tmp_path):
    out = tmp_path / "sw"
    args = ["sweep", "--model", "random:tiny", "--lambda", "16", "--window", "16", "--ctx", "256", "--task",
            "passkey", "--samples", "1", "--no-full", "--out", str(out)]
    r = run(*args)
    assert r.exit_code == 0, r.output
    r = run(*args, "--no-resume")
    assert r.exit_code == 2 and "--no-resume" in r.output and "1 finished cell(s)" in r.output, r.output
    r = run(*args)
    assert r.exit_code == 0 and "1 already done" in r.output, r.output
