"""Sweep grid, hashing, resume, failures, sharding and dry run, with a fake model runner (no model)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from types import SimpleNamespace

import pandas as pd
import pytest

from lola_bench.attention.config import LolaConfig
from lola_bench.errors import UserError
from lola_bench.settings import AttentionSettings
from lola_bench.sweep import (
    SWEEP_COLUMNS,
    CellConfig,
    CellOutput,
    SweepDir,
    SweepSpec,
    cell_hash,
    cells,
    merge_sweeps,
    parse_shard,
    plan_sweep,
    run_sweep,
    shard_cells,
)

SPEC = SweepSpec(model="random:tiny", device="cpu", lambdas=(0, 16), windows=(16, 32), ctxs=(512,),
                 tasks=("niah_single_1",), samples=2)


def fake_loader(calls):
    def load(spec):
        calls.append(spec.model)
        return SimpleNamespace(spec=spec.model, device="cpu", max_context=8192, source="fake")
    return load


class FakeRunner:
    """Deterministic rows from the cell config; ``fail`` maps a call number (1-based) to an exception."""

    def __init__(self, fail=None):
        self.fail = fail or {}
        self.ran = []

    def __call__(self, loaded, cell, progress=None):
        self.ran.append(cell.cell_id)
        exc = self.fail.get(len(self.ran))
        if exc is not None:
            raise exc
        d = cell.describe()
        lam = d["lambda"] or 0
        row = {k: d[k] for k in ("attn", "window", "lambda", "scorer", "feature_map", "task", "ctx", "n")}
        row.update(model=loaded.spec, accuracy=100.0 if d["attn"] == "full" else min(100.0, 10.0 + lam),
                   ttft_s=0.01, cache_mib=0.1 + lam / 100, peak_mem_mib=1.0, mean_prompt_tokens=480, device="cpu")
        return CellOutput(pd.DataFrame([row]), [{"index": 0, "prediction": "x", "score": 100.0}])


def test_grid_is_canonical_and_complete():
    grid = cells(replace(SPEC, ctxs=(1024, 512), tasks=("niah_multikey_2", "niah_single_1"),
                         scorers=("key_norm", "sre"), lambdas=(16, 0, 64)))
    per_task_ctx = 1 + 2 + 2 * 2 * 2          # full + base per eta + lola per eta x scorer x nonzero lambda
    assert len(grid) == 2 * 2 * per_task_ctx
    assert [c.index for c in grid] == list(range(len(grid)))
    assert len({c.cell_id for c in grid}) == len(grid)
    first = [c.describe() for c in grid[:per_task_ctx]]
    assert first[0]["attn"] == "full" and first[0]["lambda"] is None
    assert [r["attn"] for r in first].count("base") == 2          # scorer-independent: one per eta
    assert all(r["task"] == "niah_single_1" and r["ctx"] == 512 for r in first)
    # flag order and duplicates do not matter: same cells, same order
    again = cells(replace(SPEC, ctxs=(512, 1024, 512), tasks=("niah_single_1", "niah_multikey_2"),
                          scorers=("sre", "key_norm"), lambdas=(64, 0, 16, 16)))
    assert [c.cell_id for c in again] == [c.cell_id for c in grid]
    # base flag == lambda 0
    assert [c.cell_id for c in cells(replace(SPEC, lambdas=(16,), base=True))] == [c.cell_id for c in cells(SPEC)]


def test_evict_cells():
    """--evict adds eviction cells per window: lambda 0 once (scorer sink: sinks + window), then per non-sre scorer
    and lambda; no checkpoint, no feature map; sre alone is refused."""
    grid = cells(replace(SPEC, scorers=("sre", "snapkv", "attention"), evict=True, full=False))
    ev = [c for c in grid if c.config.attention.mode == "evict"]
    assert len(ev) == 2 * (1 + 2) and len(grid) == len(ev) + 2 * (1 + 3)
    assert all(c.ckpt_path is None and c.config.checkpoint is None and not c.config.attention.lola.fold for c in ev)
    rows = [c.describe() for c in ev]
    assert sorted((r["window"], r["lambda"], r["scorer"]) for r in rows) == sorted(
        (w, lam, s) for w in (16, 32) for lam, s in ((0, "sink"), (16, "snapkv"), (16, "attention")))
    assert all(r["feature_map"] is None for r in rows)
    with pytest.raises(UserError, match="other than sre"):
        replace(SPEC, evict=True)


def test_evict_at_axis_keeps_the_boundary_ids():
    """--evict-at boundary,prompt_end doubles the eviction cells (prompt_end ones carry evict_at in their config and
    label); the boundary cells keep the ids they had before the axis existed (pinned: computed before it), and
    prompt_end without eviction cells, or on the commonsense suite, is refused."""
    pinned = CellConfig("ruler", "random:tiny", "cpu", "float32", AttentionSettings(
        "evict", LolaConfig(window=16, sparse=16, fold=False, scorer="snapkv")), None, "niah_single_1", ctx=512,
        samples=2, seed=0)
    assert pinned.cell_id == "aa02deb395809169" and "evict_at" not in pinned.to_dict()["attention"]["lola"]
    lola = replace(pinned, attention=AttentionSettings("lola", LolaConfig(window=16, sparse=16)))
    assert lola.cell_id == "357f42dcb36cbd93"
    spec = replace(SPEC, scorers=("sre", "snapkv"), evict=True, full=False)
    plain = cells(spec)
    both = cells(replace(spec, evict_at=("prompt_end", "boundary", "prompt_end")))
    ev = [c for c in both if c.config.attention.mode == "evict"]
    at = [c.config.attention.lola.evict_at for c in ev]
    assert at.count("prompt_end") == at.count("boundary") == len([c for c in plain
                                                                  if c.config.attention.mode == "evict"])
    assert {c.cell_id for c in plain} <= {c.cell_id for c in both}
    pe = [c for c in ev if c.config.attention.lola.evict_at == "prompt_end"]
    assert all(c.config.to_dict()["attention"]["lola"]["evict_at"] == "prompt_end" and "at=prompt_end" in c.label
               and c.describe()["evict_at"] == "prompt_end" for c in pe)
    with pytest.raises(UserError, match="applies to eviction cells"):
        replace(SPEC, evict_at=("prompt_end",))
    with pytest.raises(UserError, match="commonsense suite"):
        SweepSpec(suite="commonsense", scorers=("sink",), evict=True, evict_at=("prompt_end",))
    with pytest.raises(UserError, match="unknown --evict-at value 'x'"):
        replace(spec, evict_at=("x",))


def test_cell_id_same_config_same_id_any_change_differs():
    lola = LolaConfig(window=16, sparse=16, feature_map="hedgehog-identity")
    base = CellConfig("ruler", "random:tiny", "cpu", "float32", AttentionSettings("lola", lola), None,
                      "niah_single_1", ctx=512, samples=2, seed=0)
    assert base.cell_id == CellConfig(**{k: getattr(base, k) for k in base.__dataclass_fields__}).cell_id
    # the id is sha256 of the canonical JSON of to_dict(), which holds every field (the LoLA config in full)
    d = base.to_dict()
    # eager decode and the head on every prompt position (what cells measured before those fields): left out
    assert set(d) == {"format", *CellConfig.__dataclass_fields__} - {"decode", "prefill_logits"}
    # sinks 0, fold True and evict_at boundary (the defaults) are left out
    assert set(d["attention"]["lola"]) >= set(LolaConfig.__dataclass_fields__) - {"sinks", "fold", "evict_at"}
    assert "fold" not in d["attention"]["lola"]   # cells hashed before eviction existed keep their ids
    canonical = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert base.cell_id == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert cell_hash(d) == base.cell_id and cell_hash(dict(reversed(d.items()))) == base.cell_id   # key order
    changes = {"suite": "commonsense", "model": "random:smollm2-135m", "device": "cuda", "dtype": "bfloat16",
               "checkpoint": "abc", "task": "niah_single_2", "ctx": 1024, "samples": 3, "seed": 1,
               "chat_template": True, "haystack": "def", "limit": 10, "num_fewshot": 5, "data": "local",
               "attention": AttentionSettings("full"), "decode": "graphed", "prefill_logits": "last"}
    lola_changes = {"window": 32, "sparse": 32, "chunk": 8, "feature_map": "elu", "scorer": "random",
                    "combine": "lolcats" if lola.combine == "gated" else "gated",
                    "gqa": "grouped" if lola.gqa == "expanded" else "expanded",
                    "factor_init": 1.0, "eps": 1e-5, "seed": 3, "sinks": 4, "fold": False,
                    "evict_at": "prompt_end"}
    # every hashed field is varied here: a field added to the cell config or LoLA config must be added above
    assert set(changes) == set(CellConfig.__dataclass_fields__)
    assert set(lola_changes) == set(LolaConfig.__dataclass_fields__)
    assert set(AttentionSettings.__dataclass_fields__) == {"mode", "lola", "kernels", "origin"}
    # the implementation is hashed as it resolves on the cell's device: a Triton cell never merges with a torch one
    triton = replace(base, attention=AttentionSettings("lola", lola, kernels="triton"))
    assert triton.cell_id != base.cell_id
    assert replace(base, attention=AttentionSettings("lola", lola, kernels="torch")).cell_id == base.cell_id
    cuda = replace(base, device="cuda")
    assert replace(cuda, attention=AttentionSettings("lola", lola, kernels="torch")).cell_id != cuda.cell_id
    # where a setting came from does not change the result, so not the id
    assert replace(base, attention=AttentionSettings("lola", lola, origin="combine=flag")).cell_id == base.cell_id
    variants = [replace(base, **{field: value}) for field, value in changes.items()]
    evict = {"fold": {"scorer": "key_norm"}, "evict_at": {"scorer": "key_norm", "fold": False}}  # eviction: no sre
    variants += [replace(base, attention=AttentionSettings("lola", replace(lola, **{field: value},
                                                                           **evict.get(field, {}))))
                 for field, value in lola_changes.items()]
    variants.append(replace(base, attention=AttentionSettings("base", lola)))              # the mode alone
    ids = [v.cell_id for v in variants]
    assert base.cell_id not in ids, [k for k, i in zip([*changes, *lola_changes, "mode"], ids) if i == base.cell_id]
    assert len(set(ids)) == len(ids)                                                     # and differ from each other
    # the spec's own fields reach the ids (seed, samples, model, dtype)
    ref = {c.cell_id for c in cells(SPEC)}
    for change in ({"seed": 1}, {"samples": 3}, {"model": "random:smollm2-135m"}, {"dtype": "float16"}):
        assert not ref & {c.cell_id for c in cells(replace(SPEC, **change))}, change


def settings_seen(monkeypatch, run_cells, field: str) -> list:
    """The RulerSettings ``field`` the sweep's runner hands run_ruler for each cell (run_ruler stubbed)."""
    import lola_bench.evals.ruler_bench as rb
    from lola_bench.sweep.run import default_run_cell

    seen = []
    monkeypatch.setattr(rb, "run_ruler", lambda loaded, variants, rs, **kw: seen.append(getattr(rs, field)) or
                        SimpleNamespace(summary=pd.DataFrame(), predictions=[], chat_template=False))
    for cell in run_cells:
        default_run_cell(SimpleNamespace(device="cpu"), cell)
    return seen


def test_graphed_decode_cells_have_their_own_ids(monkeypatch):
    """--decode-mode: auto resolves on the cell's device (eager on CPU, and eager cells keep the ids they had before
    the decode mode was hashed); graphed cells carry it in their config and never merge with eager ones; the runner
    hands it to run_ruler."""
    eager = cells(SPEC)
    assert [c.cell_id for c in cells(replace(SPEC, decode_mode="eager"))] == [c.cell_id for c in eager]
    assert all(c.config.decode is None and "decode" not in c.config.to_dict() for c in eager)
    graphed = cells(replace(SPEC, decode_mode="graphed"))
    assert all(c.config.decode == "graphed" and c.config.to_dict()["decode"] == "graphed" for c in graphed)
    assert not {c.cell_id for c in graphed} & {c.cell_id for c in eager}
    on_gpu = cells(replace(SPEC, device="cuda"))                         # auto on CUDA: graphed
    assert all(c.config.decode == "graphed" for c in on_gpu)
    assert [c.cell_id for c in cells(replace(SPEC, device="cuda", decode_mode="eager"))] != [c.cell_id for c in on_gpu]
    with pytest.raises(UserError, match="unknown --decode-mode 'fast'"):
        replace(SPEC, decode_mode="fast")
    assert settings_seen(monkeypatch, [graphed[0], eager[0]], "decode_mode") == ["graphed", "eager"]


def test_prefill_logits_all_keeps_the_ids_cells_had_before(monkeypatch):
    """--prefill-logits last (the default: the head on the last prompt position) hashes it into the cell; all (what
    every cell measured before the flag) does not, so sweeps begun then resume; the runner hands it to run_ruler."""
    last, every = cells(SPEC), cells(replace(SPEC, prefill_logits="all"))
    assert all(c.config.prefill_logits == "last" and c.config.to_dict()["prefill_logits"] == "last" for c in last)
    assert all(c.config.prefill_logits is None and "prefill_logits" not in c.config.to_dict() for c in every)
    assert not {c.cell_id for c in last} & {c.cell_id for c in every}
    pinned = CellConfig("ruler", "random:tiny", "cpu", "float32", AttentionSettings("lola", LolaConfig(window=16,
                        sparse=16)), None, "niah_single_1", ctx=512, samples=2, seed=0)
    assert pinned.cell_id == "357f42dcb36cbd93"                   # the id computed before either field existed
    with pytest.raises(UserError, match="unknown --prefill-logits 'some'"):
        replace(SPEC, prefill_logits="some")
    assert settings_seen(monkeypatch, [last[0], every[0]], "prefill_logits") == ["last", "all"]


def test_bad_input_is_rejected_up_front(tmp_path):
    for bad in ({"samples": 0}, {"lambdas": (-1,)}, {"windows": (0,)}, {"tasks": ("nope",)}, {"ctxs": (100,)},
                {"scorers": ("best",)}, {"feature_maps": ("hedgehog",)}, {"suite": "mmlu"},
                {"lambdas": (), "full": False}, {"device": "tpu"}):
        with pytest.raises(UserError):
            cells(replace(SPEC, **bad))
    for bad in ("0/2", "3/2", "1-2", "a/b"):
        with pytest.raises(UserError):
            parse_shard(bad)
    # ctx above the model's maximum: refused right after the model loads, before any cell runs
    calls, runner = [], FakeRunner()
    spec = replace(SPEC, ctxs=(512, 16384))
    with pytest.raises(UserError, match="exceeds"):
        run_sweep(spec, tmp_path, load_model=fake_loader(calls), run_cell=runner)
    assert calls and not runner.ran and not SweepDir(tmp_path).finished()


def _rows(path):
    return pd.read_csv(path / "sweep.csv")


def test_resume_after_interrupt_and_noop_rerun(tmp_path):
    grid = cells(SPEC)
    calls = []
    with pytest.raises(KeyboardInterrupt):
        run_sweep(SPEC, tmp_path, load_model=fake_loader(calls), run_cell=FakeRunner({3: KeyboardInterrupt()}))
    sweep = SweepDir(tmp_path)
    assert len(sweep.finished()) == 2 and len(_rows(tmp_path)) == 2
    assert not list(sweep.staging.iterdir())                 # the interrupted cell left nothing behind
    first_two = set(sweep.finished())

    runner = FakeRunner()
    res = run_sweep(SPEC, tmp_path, load_model=fake_loader(calls), run_cell=runner)
    assert not first_two & set(runner.ran)                   # finished cells are not rerun
    assert len(runner.ran) == len(grid) - 2 and res.skipped == 2
    df = _rows(tmp_path)
    assert list(df.columns[:len(SWEEP_COLUMNS)]) == SWEEP_COLUMNS
    assert sorted(df["cell_id"]) == sorted(c.cell_id for c in grid)    # none lost, none duplicated
    assert list(df["cell_id"]) == [c.cell_id for c in grid]            # in grid order
    assert (df["status"] == "ok").all()
    assert df.loc[df["attn"] == "base", "scorer"].isna().all()
    cell_dir = tmp_path / "cells" / grid[0].cell_id
    assert {"summary.csv", "predictions.jsonl", "done.json"} <= {p.name for p in cell_dir.iterdir()}
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["sweep"]["lambdas"] == [0, 16] and "git" in cfg["provenance"]

    def no_load(spec):
        raise AssertionError("a finished sweep must not load the model")

    res = run_sweep(SPEC, tmp_path, load_model=no_load, run_cell=runner)
    assert res.ran == [] and res.skipped == len(grid)
    pd.testing.assert_frame_equal(_rows(tmp_path), df)


def test_half_written_cells_are_redone(tmp_path):
    grid = cells(SPEC)
    sweep = SweepDir(tmp_path)
    sweep.prepare()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = sweep.staging / f"{grid[0].cell_id}.{socket.gethostname()}.{dead}.abc"
    stale.mkdir()
    (stale / "summary.csv").write_text("cell_id\n" + grid[0].cell_id + "\n")
    broken = sweep.cells_dir / grid[1].cell_id                 # a cell directory without done.json
    broken.mkdir()
    (broken / "summary.csv").write_text("garbage")
    runner = FakeRunner()
    run_sweep(SPEC, tmp_path, load_model=fake_loader([]), run_cell=runner)
    assert len(runner.ran) == len(grid)
    assert not stale.exists() and (broken / "done.json").is_file()
    assert sorted(_rows(tmp_path)["cell_id"]) == sorted(c.cell_id for c in grid)


def test_failed_cells_are_recorded_and_the_sweep_goes_on(tmp_path):
    grid = cells(SPEC)
    runner = FakeRunner({2: RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                         4: ValueError("bad prompt\nsecond line")})
    res = run_sweep(SPEC, tmp_path, load_model=fake_loader([]), run_cell=runner)
    assert len(runner.ran) == len(grid) and len(res.failed) == 2
    df = _rows(tmp_path).set_index("cell_id")
    assert df.loc[runner.ran[1], "status"] == "oom" and "out of memory" in df.loc[runner.ran[1], "error"]
    assert df.loc[runner.ran[3], "status"] == "error" and df.loc[runner.ran[3], "error"] == "ValueError: bad prompt"
    assert df.loc[runner.ran[3], "attn"] == grid[3].describe()["attn"]          # config columns still filled
    assert (tmp_path / "cells" / runner.ran[3] / "error.txt").read_text().startswith("Traceback")
    assert (df["status"] == "ok").sum() == len(grid) - 2
    # failed cells count as done ...
    again = FakeRunner()
    run_sweep(SPEC, tmp_path, load_model=fake_loader([]), run_cell=again)
    assert again.ran == []
    # ... unless retried
    run_sweep(SPEC, tmp_path, load_model=fake_loader([]), run_cell=again, retry_failed=True)
    assert sorted(again.ran) == sorted([runner.ran[1], runner.ran[3]])
    df = _rows(tmp_path)
    assert (df["status"] == "ok").all() and len(df) == len(grid)


def test_shards_partition_the_grid_and_merge(tmp_path):
    spec = replace(SPEC, lambdas=(0, 16, 64), scorers=("sre", "random"))
    grid = cells(spec)
    shards = [shard_cells(grid, f"{k}/3") for k in (1, 2, 3)]
    ids = [{c.cell_id for c in s} for s in shards]
    assert set().union(*ids) == {c.cell_id for c in grid}
    assert sum(map(len, ids)) == len(grid)                     # disjoint
    assert max(map(len, ids)) - min(map(len, ids)) <= 1
    # separate directories, merged (with one duplicated cell: deduplicated)
    dirs = []
    for k in (1, 2, 3):
        run_sweep(spec, tmp_path / f"s{k}", shard=f"{k}/3", load_model=fake_loader([]), run_cell=FakeRunner())
        dirs.append(tmp_path / f"s{k}")
    merged = merge_sweeps(dirs + [dirs[0]])
    assert sorted(merged["cell_id"]) == sorted(c.cell_id for c in grid)
    # one shared directory
    shared = tmp_path / "shared"
    for k in (2, 1, 3):
        run_sweep(spec, shared, shard=(k, 3), load_model=fake_loader([]), run_cell=FakeRunner())
    assert sorted(_rows(shared)["cell_id"]) == sorted(c.cell_id for c in grid)


def test_merge_prefers_a_successful_result(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run_sweep(SPEC, a, load_model=fake_loader([]), run_cell=FakeRunner({1: RuntimeError("boom")}))
    run_sweep(SPEC, b, load_model=fake_loader([]), run_cell=FakeRunner())
    merged = merge_sweeps([a, b])
    assert len(merged) == len(cells(SPEC)) and (merged["status"] == "ok").all()


def test_dry_run_eta(tmp_path):
    grid = cells(SPEC)
    plan = plan_sweep(SPEC, tmp_path / "none")
    assert plan.attrs["pending"] == len(grid) and plan.attrs["eta_s"] != plan.attrs["eta_s"]   # unknown: NaN
    run_sweep(SPEC, tmp_path, shard="1/2", load_model=fake_loader([]), run_cell=FakeRunner())
    walls = iter([10.0, 20.0, 30.0, 40.0])
    for cell_id in sorted(SweepDir(tmp_path).finished()):
        p = tmp_path / "cells" / cell_id / "done.json"
        info = json.loads(p.read_text())
        info["wall_s"] = next(walls)
        p.write_text(json.dumps(info))
    n_done = len(shard_cells(grid, "1/2"))
    mean = sum([10.0, 20.0, 30.0, 40.0][:n_done]) / n_done
    plan = plan_sweep(SPEC, tmp_path)
    assert list(plan["cell_id"]) == [c.cell_id for c in grid]
    assert plan.attrs == {"total": len(grid), "done": n_done, "pending": len(grid) - n_done,
                          "eta_s": pytest.approx(mean * (len(grid) - n_done))}
    assert set(plan.loc[plan["pending"], "status"]) == {"pending"}
    assert plan.loc[~plan["pending"], "eta_s"].eq(0).all()
    only2 = plan_sweep(SPEC, tmp_path, shard="2/2")
    assert only2.attrs["done"] == 0 and len(only2) == len(grid) - n_done


def test_progress_reports_one_unit_per_cell(tmp_path):
    events = []
    run_sweep(SPEC, tmp_path, load_model=fake_loader([]), run_cell=FakeRunner(),
              progress=lambda adv, desc: events.append((adv, desc)))
    assert sum(a for a, _ in events) == len(cells(SPEC))
    assert any(d and "lambda=16" in d for _, d in events)


def test_staging_is_removed_when_a_cell_is_interrupted(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_sweep(SPEC, tmp_path, load_model=fake_loader([]), run_cell=FakeRunner({1: KeyboardInterrupt()}))
    assert os.listdir(tmp_path / "cells" / ".staging") == []
    assert not SweepDir(tmp_path).finished()


def test_run_sweep_renders_no_report_the_caller_does(tmp_path):
    from lola_bench.report import render_sweep_result

    res = run_sweep(SPEC, tmp_path, load_model=fake_loader([]), run_cell=FakeRunner())
    assert not (tmp_path / "sweep.md").exists() and not list(tmp_path.glob("*.png"))
    paths = render_sweep_result(res)
    assert paths[0] == tmp_path / "sweep.md" and paths[0].is_file()
    assert any(p.suffix == ".png" for p in paths) and all(p.is_file() for p in paths)
    assert "| variant | η=16 | η=32 |" in paths[0].read_text()
    # nothing ran and sweep.md is there: left as is; sweep.md missing: written again
    again = run_sweep(SPEC, tmp_path, load_model=fake_loader([]), run_cell=FakeRunner())
    assert again.ran == [] and render_sweep_result(again) == []
    (tmp_path / "sweep.md").unlink()
    assert render_sweep_result(again)[0] == tmp_path / "sweep.md" and (tmp_path / "sweep.md").is_file()
    # an empty sweep.csv: no report
    empty = replace(res, frame=res.frame.iloc[:0], ran=["x"])
    (tmp_path / "sweep.md").unlink()
    assert render_sweep_result(empty) == [] and not (tmp_path / "sweep.md").exists()


def test_the_sweep_package_never_imports_the_report():
    import ast
    from pathlib import Path

    import lola_bench.sweep

    for path in Path(lola_bench.sweep.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):   # function-local imports included
            if isinstance(node, ast.ImportFrom):
                base = "lola_bench.sweep".split(".")[:2 - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                names = [module] + [f"{module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any(n == "lola_bench.report" or n.startswith("lola_bench.report.") for n in names), \
                (path.name, names)


def test_the_store_has_a_place_for_every_runner_column():
    """sweep.csv's columns belong to the store; the RULER runner's summary columns all have their place, in order."""
    from lola_bench.evals.ruler_bench import SUMMARY_COLUMNS

    assert [c for c in SWEEP_COLUMNS if c in SUMMARY_COLUMNS] == SUMMARY_COLUMNS
    assert SWEEP_COLUMNS[:4] == ["cell_id", "suite", "status", "error"] and SWEEP_COLUMNS[-1] == "wall_s"
    assert len(set(SWEEP_COLUMNS)) == len(SWEEP_COLUMNS)


def test_the_store_refuses_a_directory_lola_bench_did_not_write(tmp_path):
    from lola_bench.records import MARKER

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    runner = FakeRunner()
    with pytest.raises(UserError, match="did not write"):
        run_sweep(SPEC, foreign, load_model=fake_loader([]), run_cell=runner)
    assert runner.ran == [] and sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    with pytest.raises(UserError, match="did not write"):
        SweepDir(foreign).check()
    run_sweep(SPEC, tmp_path / "new", load_model=fake_loader([]), run_cell=FakeRunner())
    assert (tmp_path / "new" / MARKER).is_file()                # marked: a later run resumes there
    again = FakeRunner()
    run_sweep(SPEC, tmp_path / "new", load_model=fake_loader([]), run_cell=again)
    assert again.ran == []


def test_sweep_no_diagnostics_reaches_the_ruler_runner_and_keeps_cell_ids(monkeypatch):
    """sweep --no-diagnostics: the cells' ids do not change (diagnostics do not change accuracy) and the ruler
    runner is asked for no diagnostics."""
    import pandas as pd

    import lola_bench.evals.ruler_bench as rb
    from lola_bench.sweep.run import default_run_cell

    spec = SweepSpec(model="random:tiny", device="cpu", lambdas=(16,), windows=(16,), ctxs=(256,),
                     tasks=("passkey",), samples=1, full=False)
    on, off = cells(spec), cells(replace(spec, diagnostics=False))
    assert [c.cell_id for c in on] == [c.cell_id for c in off]
    assert all(c.diagnostics for c in on) and not any(c.diagnostics for c in off)
    seen = []

    def fake_run(loaded, variants, settings, **kw):
        seen.append(settings.diagnostics)
        return SimpleNamespace(summary=pd.DataFrame(), predictions=[], chat_template=False)

    monkeypatch.setattr(rb, "run_ruler", fake_run)
    for c in (on[0], off[0]):
        default_run_cell(SimpleNamespace(device="cpu"), c)
    assert seen == [True, False]
