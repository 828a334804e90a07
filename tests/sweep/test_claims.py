"""Sweep cells are claimed (lock files in cells/.claims): workers sharing a directory split the grid; dead
owners' claims are taken over; a disk-full commit keeps the finished cells (#18)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace

import pandas as pd
import pytest
from test_sweep import SPEC, FakeRunner, fake_loader

from lola_bench.errors import UserError
from lola_bench.sweep import SweepDir, cells, run_sweep


def test_sweep_disk_full_mid_way_keeps_the_finished_cells(tmp_path):
    """A commit failing with ENOSPC: one line, the finished cells and sweep.csv stay, no staging left."""
    real = SweepDir.commit
    calls = []

    def commit(self, *a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(self, *a, **kw)

    SweepDir.commit = commit
    try:
        with pytest.raises(UserError, match="No space left on device.*kept: 2 finished"):
            run_sweep(SPEC, tmp_path / "s", load_model=fake_loader([]), run_cell=FakeRunner())
    finally:
        SweepDir.commit = real
    s = SweepDir(tmp_path / "s")
    assert len(s.finished()) == 2
    assert len(pd.read_csv(s.csv)) == 2
    assert os.listdir(s.staging) == [] and os.listdir(s.claims) == []



# ---- sweep cells are claimed: two workers on one directory split the grid ----------------------------------

def test_two_sweeps_on_one_directory_run_disjoint_cells_and_match_one_sweep(tmp_path):
    spec = replace(SPEC, lambdas=(0, 16, 64), windows=(16, 32))
    grid = cells(spec)
    start = threading.Barrier(2)
    ran: dict[int, list[str]] = {}
    errors = []

    class Slow(FakeRunner):
        def __call__(self, loaded, cell, progress=None):
            time.sleep(0.05)
            return super().__call__(loaded, cell, progress)

    def worker(k):
        runner_ = Slow()
        try:
            start.wait()
            run_sweep(spec, tmp_path / "shared", load_model=fake_loader([]), run_cell=runner_)
        except Exception as e:  # noqa: BLE001
            errors.append(e)
        ran[k] = runner_.ran

    threads = [threading.Thread(target=worker, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert set(ran[0]).isdisjoint(ran[1]), "a cell ran twice"
    assert ran[0] and ran[1], "one worker did everything: the test did not overlap them"
    assert sorted(ran[0] + ran[1]) == sorted(c.cell_id for c in grid)
    run_sweep(spec, tmp_path / "single", load_model=fake_loader([]), run_cell=FakeRunner())
    drop = ["wall_s"]
    shared = pd.read_csv(tmp_path / "shared" / "sweep.csv").drop(columns=drop)
    single = pd.read_csv(tmp_path / "single" / "sweep.csv").drop(columns=drop)
    pd.testing.assert_frame_equal(shared, single)
    assert os.listdir(tmp_path / "shared" / "cells" / ".claims") == []


def test_claims_of_live_workers_are_respected_and_dead_ones_taken_over(tmp_path):
    grid = cells(SPEC)
    s = SweepDir(tmp_path)
    s.prepare()                                   # a sweep directory another worker started
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    (s.claims / f"{grid[0].cell_id}.lock").write_text(json.dumps({"host": host, "pid": os.getppid(),
                                                                   "token": "live"}))
    (s.claims / f"{grid[1].cell_id}.lock").write_text(json.dumps({"host": host, "pid": dead.pid, "token": "x"}))
    (s.claims / f"{grid[2].cell_id}.lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "y"}))
    runner_ = FakeRunner()
    res = run_sweep(SPEC, tmp_path, load_model=fake_loader([]), run_cell=runner_)
    assert grid[0].cell_id not in runner_.ran                # a live worker of this host holds it
    assert grid[1].cell_id in runner_.ran                    # its owner died: taken over
    assert grid[2].cell_id not in runner_.ran                # another host's claim is trusted
    assert set(res.elsewhere) == {grid[0].cell_id, grid[2].cell_id}
    assert not (s.claims / f"{grid[1].cell_id}.lock").exists()


def test_context_check_fails_before_anything_is_written(tmp_path):
    """The model's maximum context is checked before the sweep directory gets config.json or cells/.staging."""
    out = tmp_path / "sweep"
    with pytest.raises(UserError, match="maximum context"):
        run_sweep(replace(SPEC, ctxs=(100000,)), out, load_model=fake_loader([]), run_cell=FakeRunner())
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
    run_sweep(SPEC, out, load_model=fake_loader([]), run_cell=FakeRunner())       # an existing sweep: resumed
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match="maximum context"):
        run_sweep(replace(SPEC, ctxs=(100000,)), out, load_model=fake_loader([]), run_cell=FakeRunner())
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before   # config.json untouched
