"""The command line: help, bad input (one line, exit 2, nothing on disk) and a tiny end-to-end ruler run."""

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from lola_bench.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, list(args))


def test_help_lists_commands_and_explains_flags():
    r = run("--help")
    assert r.exit_code == 0
    for cmd in ("info", "ruler", "commonsense"):
        assert cmd in r.output
    r = run("ruler", "--help")
    assert r.exit_code == 0
    for flag in ("--ctx", "--task", "--samples", "--attn", "--window", "--lambda", "--scorer", "--feature-map",
                 "--model", "--seed", "--out"):
        assert flag in r.output


def test_info_runs():
    import torch

    r = run("info")
    assert r.exit_code == 0, r.output
    for row in ("lola-bench", "git", "device", "cache dir", "embedded model", "data dir", "triton kernels"):
        assert row in r.output, row
    assert torch.__version__ in r.output                 # the versions shown are the ones installed
    assert "CPU" in r.output or "GPU" in r.output


@pytest.mark.parametrize("args,match", [
    (["--samples", "0"], "--samples"),
    (["--task", "nope"], "unknown task"),
    (["--ctx", "100000"], "maximum context"),
    (["--window", "0"], "window"),
    (["--lambda", "-1"], "lambda"),
    (["--scorer", "bogus"], "--scorer"),
    (["--feature-map", "bogus"], "--feature-map"),
    (["--attn", "sparse"], "unknown --attn"),
    (["--model", "random:nope"], "unknown random preset"),
    (["--model", "/no/such/file.gguf"], "GGUF file not found"),
    (["--task", "niah_single_2", "--essay-path", "/no/such/essays.json"], "unavailable"),
])
def test_ruler_bad_input_is_one_line_and_leaves_nothing(tmp_path, args, match):
    out = tmp_path / "run"
    base = ["ruler", "--model", "random:tiny", "--ctx", "512", "--samples", "1", "--out", str(out)]
    r = run(*base, *args)
    assert r.exit_code == 2, r.output
    assert match in r.output
    assert "Traceback" not in r.output
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir()], "nothing may be left behind"


def test_commonsense_bad_input(tmp_path):
    out = tmp_path / "cs"
    r = run("commonsense", "--model", "random:tiny", "--tasks", "nope", "--out", str(out))
    assert r.exit_code == 2 and "nope" in r.output and not out.exists()
    r = run("commonsense", "--model", "random:tiny", "--limit", "0", "--out", str(out))
    assert r.exit_code == 2 and "--limit" in r.output and not out.exists()


def test_ruler_tiny_end_to_end(tmp_path):
    out = tmp_path / "run"
    r = run("ruler", "--model", "random:tiny", "--ctx", "512", "--ctx", "640", "--samples", "2", "--attn", "full",
            "--attn", "lola", "--window", "16", "--lambda", "32", "--task", "niah_single_1", "--task", "passkey",
            "--out", str(out))
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out / "summary.csv")
    need = ["model", "attn", "window", "lambda", "scorer", "feature_map", "task", "ctx", "n", "accuracy", "ttft_s",
            "decode_ms_per_token", "peak_mem_mib", "cache_mib", "full_kv_mib"]
    assert all(c in df.columns for c in need)
    assert len(df) == 2 * 2 * 2 and set(df["n"]) == {2}
    assert (df[df.attn == "lola"]["cache_mib"] > 0).all()
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 16 and {"task", "ctx", "depth", "seed", "answer", "prediction", "score"} <= set(preds[0])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["provenance"]["git"]["commit"] and cfg["attention"][1]["lola"]["sparse"] == 32
    assert (out / "summary.md").is_file()
    assert list(out.glob("heatmap_*.png")), "several contexts -> depth x length heatmaps"
    r = run("ruler", "--model", "random:tiny", "--ctx", "512", "--samples", "1", "--out", str(out))
    assert r.exit_code == 2 and "already exists" in r.output


def test_log_progress_eta_counts_only_this_runs_work(capsys):
    """A resumed run starts at step 150 of 200: the ETA comes from this run's rate, not 150 steps in 10 s."""
    from lola_bench.cli.display import LogProgress

    clock = iter([0.0, 0.0, 10.0, 10.0, 20.0, 20.0])
    prog = LogProgress(every=0.0)
    prog._time = lambda: next(clock)
    tid = prog.add_task("linearize", total=200)
    prog.update(tid, completed=150)   # first report after resuming (t=0)
    prog.update(tid, completed=160)   # 10 steps in 10 s -> 40 left -> 40 s
    prog.update(tid, completed=170)   # 20 steps in 20 s -> 30 left -> 30 s
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "ETA" in ln]
    assert lines[-2].endswith("ETA 40s") and lines[-1].endswith("ETA 30s"), lines


@pytest.mark.parametrize("flag", ["--lambda", "--window", "--ctx"])
def test_sweep_bad_integer_list_names_the_flag(tmp_path, flag):
    out = tmp_path / "sweep"
    r = run("sweep", "--model", "random:tiny", flag, "64,abc", "--out", str(out), "--dry-run")
    assert r.exit_code == 2, r.output
    assert f"{flag}: expected integers" in r.output and "Traceback" not in r.output
    assert not out.exists()


def test_ruler_evict_runs_as_streamingllm_and_refuses_sre(tmp_path):
    """--attn evict --scorer sink --sinks 4 --lambda 0 (StreamingLLM): rows say evict, no feature map, no
    checkpoint, the torch path; --attn evict with the SRE scorer is refused in one line before anything is written."""
    out = tmp_path / "run"
    r = run("ruler", "--model", "random:tiny", "--attn", "evict", "--scorer", "sink", "--sinks", "4", "--window", "64",
            "--lambda", "0", "--ctx", "512", "--task", "passkey", "--samples", "1", "--out", str(out))
    assert r.exit_code == 0, r.output
    df = pd.read_csv(out / "summary.csv")
    assert len(df) == 1 and df.attn[0] == "evict" and df.scorer[0] == "sink" and df["lambda"][0] == 0
    assert df.sinks[0] == 4 and pd.isna(df.feature_map[0]) and df.cache_mib[0] > 0
    assert pd.isna(df.checkpoint[0]) and df.variant[0] == "eviction: StreamingLLM (η=64, λ=0)"   # named as such
    assert "KV eviction keeps every pair" in (out / "summary.md").read_text()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["attention"][0]["lola"]["fold"] is False and not cfg.get("lola_checkpoint")
    bad = tmp_path / "bad"
    r = run("ruler", "--model", "random:tiny", "--attn", "evict", "--ctx", "512", "--samples", "1", "--out", str(bad))
    assert r.exit_code == 2 and "sre" in r.output and "Traceback" not in r.output and not bad.exists()


def test_ruler_evict_at_prompt_end(tmp_path):
    """--evict-at prompt_end: the row and config.json say so, the cache reported is the compressed prompt plus every
    generated token (prompt_end never evicts while decoding; boundary mode's window slides): each equals the analytic
    count at the tokens the sample fed (prompt + generated - 1, the last token is never fed), and the flag is refused
    in one line, before anything is written, without an evict variant and for perplexity (full attention)."""
    from dataclasses import replace

    from lola_bench.attention.config import LolaConfig
    from lola_bench.attention.state import analytic_bytes
    from lola_bench.sweep.budget import MIB, model_shapes

    shapes = model_shapes("random:tiny")
    rows = {}
    for at in ("boundary", "prompt_end"):
        out = tmp_path / at
        r = run("ruler", "--model", "random:tiny", "--attn", "evict", "--scorer", "snapkv", "--evict-at", at,
                "--window", "8", "--lambda", "64", "--ctx", "512", "--task", "passkey", "--samples", "1",
                "--out", str(out))
        assert r.exit_code == 0, r.output
        rows[at] = pd.read_csv(out / "summary.csv").iloc[0]
        lola = json.loads((out / "config.json").read_text())["attention"][0]["lola"]
        assert lola.get("evict_at", "boundary") == at and ("evict_at" in lola) == (at == "prompt_end")
        pred = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
        cfg = replace(LolaConfig(**{k: v for k, v in lola.items() if k != "chunk_size"}), evict_at=at)
        P, fed = pred["n_prompt_tokens"], pred["n_prompt_tokens"] + pred["n_generated"] - 1
        assert fed // cfg.chunk_size > P // cfg.chunk_size      # decoding crossed a chunk boundary
        want = analytic_bytes(cfg, fed, batch=1, query_heads=shapes.heads, kv_heads=shapes.kv_heads,
                              head_dim=shapes.head_dim, feature_dim=0, dtype=shapes.dtype, layers=shapes.layers,
                              prompt_len=P)
        assert rows[at]["cache_mib"] == pytest.approx(sum(want.values()) / MIB, rel=1e-12)
        assert rows[at]["window_mib"] == pytest.approx(want["window"] / MIB, rel=1e-12)
        if at == "prompt_end":
            ws, hs = cfg.window_start(P // cfg.chunk_size), shapes.kv_heads if cfg.gqa == "grouped" else shapes.heads
            assert want["window"] == 2 * hs * (fed - ws) * shapes.head_dim * 4 * shapes.layers   # every fed token
    assert rows["prompt_end"]["evict_at"] == "prompt_end" and rows["boundary"]["evict_at"] == "boundary"
    assert rows["prompt_end"]["sparse_mib"] == rows["boundary"]["sparse_mib"] > 0
    assert rows["prompt_end"]["cache_mib"] < rows["prompt_end"]["full_kv_mib"]
    for args in (("ruler", "--attn", "full,lola", "--ctx", "512"), ("perplexity", "--attn", "evict")):
        bad = tmp_path / "bad"
        r = run(*args[:1], "--model", "random:tiny", "--scorer", "sink", "--evict-at", "prompt_end", *args[1:],
                "--out", str(bad))
        assert r.exit_code == 2 and "--evict-at" in r.output and "Traceback" not in r.output, r.output
        assert not bad.exists()


def test_evict_never_resolves_or_applies_a_checkpoint():
    from lola_bench.models.loading import random_model
    from lola_bench.models.variants import apply_attention
    from lola_bench.runs import resolve_variants
    from lola_bench.settings import LolaFlags, ModelSettings

    flags = LolaFlags(scorer="sink")
    ckpt, variants = resolve_variants(("full", "evict"), flags, ModelSettings())  # the embedded model has one
    assert ckpt is None and variants[1].mode == "evict" and variants[1].lola.fold is False
    ckpt, variants = resolve_variants(("lola", "evict"), flags, ModelSettings())
    assert ckpt is not None and variants[1].lola.fold is False
    model = random_model("tiny")
    info = apply_attention(model, variants[1], ckpt)  # would fail loading a checkpoint into the tiny model
    assert info == {"mode": "evict", "checkpoint": None}
