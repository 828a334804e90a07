"""sweep --launcher local (submitit's LocalExecutor): an array job over the pending cells, a killed job recorded
and only its cells resubmitted, the same sweep.csv as a plain sweep."""

from __future__ import annotations

import json
import os
import signal
import sys
from types import SimpleNamespace

import pandas as pd
import pytest

pytest.importorskip("submitit")
import cloudpickle  # noqa: E402  (submitit's dependency)

from lola_bench.errors import UserError  # noqa: E402
from lola_bench.sweep import CellOutput, SweepSpec, cells, run_sweep  # noqa: E402
from lola_bench.sweep.launch import (  # noqa: E402
    SlurmOptions,
    launch_sweep,
    parse_slurm_params,
    parse_slurm_time,
    read_jobs,
    sbatch_script,
)

cloudpickle.register_pickle_by_value(sys.modules[__name__])   # the fakes below travel to the job processes

SPEC = SweepSpec(model="random:tiny", device="cpu", lambdas=(0, 16, 32), windows=(16,), ctxs=(512,),
                 tasks=("niah_single_1",), samples=2)            # 4 cells: full, base, lola at lambda 16 and 32
TIMING = ["ttft_s", "decode_ms_per_token", "peak_mem_mib", "wall_s"]


def fake_load(spec):
    return SimpleNamespace(spec=spec.model, device="cpu", max_context=8192, source="fake")


class Runner:
    """Deterministic rows from the cell; with ``kill`` (a cell id) and ``marker`` (a path), the first process to
    reach that cell dies by SIGKILL, as a pre-empted or OOM-killed job would."""

    def __init__(self, kill: str | None = None, marker: str | None = None):
        self.kill, self.marker = kill, marker

    def __call__(self, loaded, cell, progress=None):
        if cell.cell_id == self.kill and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        d = cell.describe()
        row = {k: d[k] for k in ("attn", "window", "lambda", "scorer", "feature_map", "task", "ctx", "n")}
        row.update(model=loaded.spec, accuracy=float(7 * cell.index % 100), ttft_s=0.01, device="cpu")
        return CellOutput(pd.DataFrame([row]), [{"index": 0, "prediction": "x", "score": 100.0}])


def _table(path):
    return pd.read_csv(path).drop(columns=TIMING)


def test_local_launcher_survives_a_killed_job_and_matches_a_plain_sweep(tmp_path):
    grid = cells(SPEC)
    assert len(grid) == 4
    victim = grid[2].cell_id
    out = tmp_path / "launched"
    res = launch_sweep(SPEC, out, launcher="local", jobs=2, run_cell=Runner(victim, str(tmp_path / "killed")),
                       load_model=fake_load)                     # tasks: cells [0, 2] and [1, 3]
    assert res.waited and [r["cells"] for r in res.submitted] == [[grid[0].cell_id, victim],
                                                                  [grid[1].cell_id, grid[3].cell_id]]
    assert sorted(res.sweep.ran) == sorted(c.cell_id for c in grid if c.cell_id != victim)
    # the killed job is recorded with its id, state and log paths; only the cell it was in is open
    [dead] = res.failed_jobs
    assert dead["open_cells"] == [victim] and dead["state"] == "KILLED"
    assert os.path.isfile(dead["stderr"]) and str(dead["job_id"]) in dead["stderr"]
    on_disk = {r["job_id"]: r for r in read_jobs(SimpleNamespace(path=out))}
    assert on_disk[dead["job_id"]]["state"] == "KILLED" and on_disk[dead["job_id"]]["closed"]
    assert dead["job_id"] in (out / "jobs" / "jobs.csv").read_text()
    assert len(pd.read_csv(out / "sweep.csv")) == 3

    again = launch_sweep(SPEC, out, launcher="local", run_cell=Runner(), load_model=fake_load)
    assert [r["cells"] for r in again.submitted] == [[victim]]       # only the missing cell is resubmitted
    assert again.sweep.ran == [victim] and not again.failed_jobs

    nothing = launch_sweep(SPEC, out, launcher="local", run_cell=Runner(), load_model=fake_load)
    assert nothing.submitted == [] and len(nothing.sweep.frame) == 4

    plain = tmp_path / "plain"
    run_sweep(SPEC, plain, run_cell=Runner(), load_model=fake_load)
    pd.testing.assert_frame_equal(_table(out / "sweep.csv"), _table(plain / "sweep.csv"))


def test_jobs_split_the_pending_cells_and_a_live_job_keeps_its_cells(tmp_path):
    out = tmp_path / "s"
    res = launch_sweep(SPEC, out, launcher="local", jobs=2, run_cell=Runner(), load_model=fake_load)
    assert sorted(len(r["cells"]) for r in res.submitted) == [2, 2]
    assert sorted(c for r in res.submitted for c in r["cells"]) == sorted(c.cell_id for c in cells(SPEC))
    # a job recorded as still running (a live pid) holds its cells: they are not submitted again
    held = cells(SPEC)[0].cell_id
    (out / "cells" / held / "done.json").unlink()
    rec = {"job_id": str(os.getpid()), "launcher": "local", "state": "RUNNING", "cells": [held], "open_cells": [held],
           "submitted_utc": "2000-01-01T00:00:00Z", "folder": str(tmp_path), "stdout": "", "stderr": ""}
    (out / "jobs" / f"{os.getpid()}.json").write_text(json.dumps(rec))
    again = launch_sweep(SPEC, out, launcher="local", run_cell=Runner(), load_model=fake_load)
    assert again.submitted == [] and [r["job_id"] for r in again.running] == [str(os.getpid())]


def broken_load(spec):
    raise RuntimeError("no such model on this node")


def test_a_job_that_raises_is_recorded_failed_with_its_error_and_log(tmp_path):
    res = launch_sweep(SPEC, tmp_path / "s", launcher="local", jobs=1, run_cell=Runner(), load_model=broken_load)
    [job] = res.failed_jobs
    assert job["state"] == "FAILED" and "no such model on this node" in job["error"]
    assert "no such model on this node" in open(job["stderr"]).read()
    assert sorted(job["open_cells"]) == sorted(c.cell_id for c in cells(SPEC)) and res.sweep.ran == []


def test_slurm_options_parse_and_reach_submitit():
    assert parse_slurm_time("90") == 90 and parse_slurm_time("4:00:00") == 240 and parse_slurm_time("1-00:30") == 1470
    with pytest.raises(UserError, match="--slurm-time"):
        parse_slurm_time("soon")
    assert parse_slurm_params(["account=abc", "--qos=high"]) == (("account", "abc"), ("qos", "high"))
    with pytest.raises(UserError, match="KEY=VALUE"):
        parse_slurm_params(["account"])
    p = SlurmOptions(partition="gpu", gpus_per_task=1, time_min=60, array_parallelism=8,
                     extra=(("account", "abc"),)).executor_parameters("slurm")
    assert p["slurm_partition"] == "gpu" and p["slurm_gpus_per_task"] == 1 and p["timeout_min"] == 60
    assert p["slurm_array_parallelism"] == 8 and p["slurm_additional_parameters"] == {"account": "abc"}
    script = sbatch_script(SlurmOptions(partition="gpu", gpus_per_task=1, time_min=60, array_parallelism=8,
                                        extra=(("account", "abc"),)), tasks=20)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-task=1", "#SBATCH --account=abc",
                 "#SBATCH --time=60", "#SBATCH --array=0-19%8"):
        assert line in script


def test_cli_launcher_local_gives_the_plain_sweep_csv(tmp_path):
    """The real command on random:tiny: 4 cells through one local job, the same sweep.csv as a plain sweep."""
    from typer.testing import CliRunner

    from lola_bench.cli import app

    args = ["sweep", "--model", "random:tiny", "--device", "cpu", "--lambda", "0,16,32", "--window", "16",
            "--ctx", "256", "--samples", "1"]
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "launched"), "--launcher", "local", "--jobs", "1"])
    assert r.exit_code == 0, r.output
    assert "submitted 1 local job(s) for 4 cell(s)" in r.output
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "plain")])
    assert r.exit_code == 0, r.output
    launched, plain = (_table(tmp_path / d / "sweep.csv") for d in ("launched", "plain"))
    assert len(launched) == 4 and set(launched["status"]) == {"ok"}
    pd.testing.assert_frame_equal(launched, plain)
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "launched"), "--launcher", "local"])
    assert r.exit_code == 0 and "nothing to submit" in r.output


def test_cli_launcher_flags_are_checked_before_anything_is_written(tmp_path):
    from typer.testing import CliRunner

    from lola_bench.cli import app

    base = ["sweep", "--model", "random:tiny", "--device", "cpu", "--lambda", "0", "--window", "16", "--ctx", "256",
            "--out", str(tmp_path / "s")]
    for extra, msg in ((["--slurm-partition", "gpu"], "go with --launcher"),
                       (["--launcher", "local", "--jobs", "0"], "--jobs must be >= 1"),
                       (["--launcher", "slurm", "--slurm-time", "soon"], "--slurm-time"),
                       (["--launcher", "local", "--slurm-param", "account"], "KEY=VALUE")):
        r = CliRunner().invoke(app, [*base, *extra])
        assert r.exit_code == 2 and msg in r.output, (extra, r.output)
    if __import__("shutil").which("sbatch") is None:
        r = CliRunner().invoke(app, [*base, "--launcher", "slurm"])
        assert r.exit_code == 2 and "no sbatch" in r.output
    assert not (tmp_path / "s").exists()


def test_a_requeued_job_takes_back_its_own_claims_and_dead_jobs_claims_are_dropped(tmp_path, monkeypatch):
    from lola_bench.sweep import SweepDir
    from lola_bench.sweep.store import JOB_ENV

    sweep = SweepDir(tmp_path / "s")
    sweep.prepare()
    live_other_pid = os.getppid()                 # a live process of this host: its claims are normally trusted
    for cell, job in (("a", "77_1"), ("b", "77_2")):
        (sweep.claims / f"{cell}.lock").write_text(json.dumps(
            {"host": __import__("socket").gethostname(), "pid": live_other_pid, "token": "t", "job": job}))
    monkeypatch.delenv(JOB_ENV, raising=False)
    assert not sweep.claim("a")
    monkeypatch.setenv(JOB_ENV, "77_1")           # the same array task, requeued after pre-emption
    assert sweep.claim("a") and not sweep.claim("b")
    assert sweep.drop_claims_of(["77_2"]) == ["b"] and sweep.claim("b")


def test_preemption_is_noted_and_the_task_requeued(tmp_path, monkeypatch):
    import submitit

    from lola_bench.sweep.launch import SweepTask

    env = SimpleNamespace(job_id="88_3", paths=SimpleNamespace(stdout=tmp_path / "o", stderr=tmp_path / "e"))
    monkeypatch.setattr(submitit, "JobEnvironment", lambda: env)
    delayed = SweepTask().checkpoint(SPEC, str(tmp_path), None, ["x"], False)
    assert isinstance(delayed, submitit.helpers.DelayedSubmission) and delayed.args[3] == ["x"]
    [event] = (tmp_path / "jobs" / "events").glob("88_3-*.json")
    assert json.loads(event.read_text())["event"] == "requeued"


def test_cells_jobs_finished_since_the_last_call_are_reported_as_ran(tmp_path):
    """Jobs that ran without waiting (slurm's default) finish after the call that submitted them: the next call
    counts the cells missing from the old sweep.csv as ran, so sweep.md is re-rendered from them."""
    out = tmp_path / "s"
    launch_sweep(SPEC, out, launcher="local", run_cell=Runner(), load_model=fake_load)
    late = cells(SPEC)[3].cell_id
    old = pd.read_csv(out / "sweep.csv")
    old[old["cell_id"] != late].to_csv(out / "sweep.csv", index=False)     # written before that job ended
    again = launch_sweep(SPEC, out, launcher="local", run_cell=Runner(), load_model=fake_load)
    assert again.submitted == [] and again.sweep.ran == [late] and len(again.sweep.frame) == 4
