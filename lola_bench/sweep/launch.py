"""sweep --launcher slurm|local: the pending cells of a sweep as one submitit array job.

The sweep directory is the only shared state. One call of ``launch_sweep``:

1. reconciles the jobs earlier calls submitted (``jobs/<job id>.json``): a job still pending or running keeps its
   cells; a job that ended without finishing its cells (failed, pre-empted, cancelled, timed out, killed) is
   recorded as such, with its job id, state and log paths, its claims on cells are dropped, and its cells are
   pending again;
2. submits the pending cells that no live job holds (of ``--shard k/n``, if given) as one array job of ``jobs``
   tasks (default: one task per cell); task k runs ``run_sweep(..., shard=shard, only=<its cells>)``, the ordinary
   resumable sweep, so each finished cell lands in ``cells/<id>/`` atomically and sweep.csv is rebuilt;
3. with ``wait``, waits for the tasks, reconciles again and rebuilds sweep.csv.

Rerunning the same command therefore merges what finished and resubmits only what did not. On Slurm a task that is
pre-empted or reaches its time limit is requeued by submitit (same job id; it takes its own claims back and
redoes only the cell it was in). ``--launcher local`` runs the same path with submitit's LocalExecutor (one process
per task on this machine): that is what the tests use.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import UserError
from ..records import atomic_write_json, atomic_write_text, frame_to_csv
from .grid import SweepSpec, cells
from .run import SweepResult, _pending
from .shard import as_shard, shard_cells
from .store import JOB_ENV, SweepDir, read_sweep_csv

LAUNCHERS = ("slurm", "local")
# Slurm states of a job that may still run its cells (UNKNOWN: sacct has not caught up; it is not resubmitted)
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED",
                 "REQUEUE_HOLD", "REQUEUE_FED", "STAGE_OUT", "SIGNALING", "UNKNOWN"}


@dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    gpus_per_task: int | None = None
    time_min: int | None = None             # --slurm-time, in minutes
    array_parallelism: int | None = None
    extra: tuple[tuple[str, str], ...] = ()  # --slurm-param KEY=VALUE: passed to sbatch as --KEY=VALUE
    cpus_per_task: int | None = None
    mem_gb: int | None = None

    def executor_parameters(self, launcher: str) -> dict:
        """submitit AutoExecutor.update_parameters() arguments."""
        p: dict = {"name": "lola-bench-sweep"}
        if self.time_min is not None:
            p["timeout_min"] = self.time_min
        if self.cpus_per_task is not None:
            p["cpus_per_task"] = self.cpus_per_task
        if self.mem_gb is not None:
            p["mem_gb"] = self.mem_gb
        if launcher == "slurm":
            if self.partition:
                p["slurm_partition"] = self.partition
            if self.gpus_per_task is not None:
                p["slurm_gpus_per_task"] = self.gpus_per_task
            if self.array_parallelism is not None:
                p["slurm_array_parallelism"] = self.array_parallelism
            if self.extra:
                p["slurm_additional_parameters"] = dict(self.extra)
        return p


def sbatch_script(slurm: SlurmOptions, folder: str = "SWEEP/jobs/submitit/%j", tasks: int = 1) -> str:
    """The sbatch script submitit writes for these options (``sweep --launcher slurm --dry-run`` prints it)."""
    from submitit.slurm.slurm import _make_sbatch_string

    p = slurm.executor_parameters("slurm")
    kw = {"job_name": p.pop("name")}
    if "timeout_min" in p:
        kw["time"] = p.pop("timeout_min")
    if "mem_gb" in p:
        kw["mem"] = f"{p.pop('mem_gb')}GB"
    kw.update({k.removeprefix("slurm_"): v for k, v in p.items()})
    return _make_sbatch_string("python -u -m submitit.core._submit " + folder, folder=folder,
                               map_count=tasks if tasks > 1 else None, **kw)


def parse_slurm_time(text: str | None) -> int | None:
    """--slurm-time: minutes (``90``) or Slurm's [D-]HH:MM[:SS] (``1-00:00:00``, ``4:00:00``) -> minutes."""
    if text is None or text == "":
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d{1,2})(?::(\d{1,2}))?", text.strip())
    if text.strip().isdigit():
        minutes = int(text)
    elif m:
        d, h, mi, s = (int(x) if x else 0 for x in m.groups())
        minutes = d * 1440 + h * 60 + mi + (1 if s else 0)
    else:
        raise UserError(f"--slurm-time {text!r}: give minutes (90) or [D-]HH:MM[:SS] (4:00:00)")
    if minutes < 1:
        raise UserError(f"--slurm-time {text!r} is shorter than a minute")
    return minutes


def parse_slurm_params(items) -> tuple[tuple[str, str], ...]:
    """--slurm-param KEY=VALUE (repeatable; e.g. account=abc, qos=high, constraint=a100) -> ((key, value), ...)."""
    out = []
    for item in items or ():
        key, sep, value = str(item).partition("=")
        key = key.strip().lstrip("-")
        if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key):
            raise UserError(f"--slurm-param {item!r}: give KEY=VALUE (e.g. account=myproject, qos=high)")
        out.append((key.replace("-", "_"), value))
    return tuple(out)


@dataclass
class LaunchResult:
    sweep: SweepResult                                   # sweep.csv as of now, and the cells the jobs ran
    submitted: list[dict] = field(default_factory=list)  # job records submitted by this call
    running: list[dict] = field(default_factory=list)    # earlier jobs still pending / running
    failed_jobs: list[dict] = field(default_factory=list)  # jobs found ended without finishing their cells
    waited: bool = False


class SweepTask:
    """One array task: ``run_sweep`` over its cells. Checkpointable: when Slurm pre-empts it or its time runs out,
    submitit requeues it (same job id) and the rerun finishes what is left."""

    def __call__(self, spec: SweepSpec, out_dir: str, shard, cell_ids: list[str], retry_failed: bool,
                 run_cell=None, load_model=None) -> dict:
        import submitit

        from .run import run_sweep

        os.environ[JOB_ENV] = str(submitit.JobEnvironment().job_id)
        res = run_sweep(spec, out_dir, shard=shard, only=cell_ids, retry_failed=retry_failed, run_cell=run_cell,
                        load_model=load_model)
        out = {"ran": res.ran, "failed": res.failed, "elsewhere": res.elsewhere}
        _record_event(out_dir, "ended", out)
        return out

    def checkpoint(self, spec, out_dir, *args, **kwargs):
        """Called by submitit when Slurm pre-empts the task or its time runs out: note it, then requeue."""
        import submitit

        try:
            _record_event(out_dir, "requeued", {})
        except OSError:
            pass
        return submitit.helpers.DelayedSubmission(self, spec, out_dir, *args, **kwargs)


def check_launcher(launcher: str) -> None:
    """A one-line UserError for a launcher that cannot run here (unknown, submitit missing, no sbatch)."""
    import shutil

    if launcher not in LAUNCHERS:
        raise UserError(f"--launcher {launcher!r}: choose {', '.join(LAUNCHERS)}")
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise UserError("--launcher needs the submitit package: pip install submitit (make setup installs it)"
                        ) from None
    if launcher == "slurm" and shutil.which("sbatch") is None:
        raise UserError("--launcher slurm: no sbatch on this machine (run the sweep from a Slurm login node; "
                        "--launcher local runs the same jobs here)")


def _executor(launcher: str, folder: Path, slurm: SlurmOptions):
    import submitit

    try:
        ex = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=launcher)
        ex.update_parameters(**slurm.executor_parameters(launcher))
    except (RuntimeError, ValueError, TypeError) as e:   # e.g. no sbatch here, an unknown parameter
        raise UserError(f"--launcher {launcher}: {' '.join(str(e).split())[:300]}") from None
    return ex


def _jobs_dir(sweep: SweepDir) -> Path:
    return sweep.path / "jobs"


def read_jobs(sweep: SweepDir) -> list[dict]:
    """Every job record of the sweep directory, oldest first."""
    d = _jobs_dir(sweep)
    out = []
    for f in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            out.append(json.loads(f.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return sorted(out, key=lambda r: (r.get("submitted_utc", ""), str(r.get("job_id"))))


def _write_job(sweep: SweepDir, record: dict) -> None:
    atomic_write_json(_jobs_dir(sweep) / f"{_safe(record['job_id'])}.json", record)


def _write_jobs_table(sweep: SweepDir) -> None:
    cols = ["job_id", "launcher", "state", "requeued", "cells", "open_cells", "submitted_utc", "checked_utc", "error",
            "stdout", "stderr"]
    events = _jobs_dir(sweep) / "events"
    rows = [{**r, "cells": " ".join(r.get("cells", [])), "open_cells": " ".join(r.get("open_cells", [])),
             "requeued": len(list(events.glob(f"{_safe(r['job_id'])}-*.json"))) if events.is_dir() else 0}
            for r in read_jobs(sweep)]
    atomic_write_text(_jobs_dir(sweep) / "jobs.csv", frame_to_csv(pd.DataFrame(rows).reindex(columns=cols)))


def _job_state(sweep: SweepDir, record: dict) -> tuple[str, str | None]:
    """(state, error) of a recorded job: FINISHED once the task wrote its end record (jobs/ended/<id>.json);
    else Slurm's state from sacct, or for a local job RUNNING while its process lives and KILLED after. The error is
    the last line of the job's stderr log. (submitit's result pickles are never read here.)"""
    if (_jobs_dir(sweep) / "ended" / f"{_safe(record['job_id'])}.json").is_file():
        return "FINISHED", None
    if record["launcher"] == "local":
        from .store import _pid_alive

        if _pid_alive(int(record["job_id"])):
            return "RUNNING", None
        state = "FAILED" if Path(record.get("result", "")).is_file() else "KILLED"   # raised / died
    else:
        import submitit

        folder = Path(record["folder"]).parent / "%j"
        state = str(submitit.SlurmJob(folder=str(folder), job_id=str(record["job_id"])).state).upper()
        state = state.split()[0] if state.strip() else "UNKNOWN"     # "CANCELLED by 123" -> CANCELLED
        if state in ACTIVE_STATES:
            return state, None
    return state, _last_line(record.get("stderr"))


def _last_line(path: str | None) -> str | None:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            lines = [x.strip() for x in f.read().decode("utf-8", "replace").splitlines() if x.strip()]
    except (OSError, TypeError):
        return None
    return lines[-1][:500] if lines else None


def _safe(job_id) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(job_id))


def _record_event(out_dir: str, kind: str, info: dict) -> None:
    """Written by a job about itself: jobs/ended/<id>.json when it returns, jobs/events/<id>-<ns>.json when Slurm
    pre-empts it or its time runs out (it is then requeued)."""
    import socket

    import submitit

    env = submitit.JobEnvironment()
    rec = {"job_id": str(env.job_id), "host": socket.gethostname(), "utc": _now(), "event": kind,
           "stdout": str(env.paths.stdout).replace("%t", "0"), "stderr": str(env.paths.stderr).replace("%t", "0"),
           **info}
    name = f"{_safe(env.job_id)}.json" if kind == "ended" else f"{_safe(env.job_id)}-{time.time_ns()}.json"
    atomic_write_json(Path(out_dir) / "jobs" / ("ended" if kind == "ended" else "events") / name, rec)


def reconcile(sweep: SweepDir, retry_failed: bool = False) -> tuple[list[dict], list[dict]]:
    """Bring the job records up to date: (running jobs, jobs newly found ended with cells left open). A job that
    ended with open cells has its claims dropped, so the cells are pending again."""
    running, failed = [], []
    for rec in read_jobs(sweep):
        if rec.get("closed"):
            continue
        open_cells = [c for c in rec.get("cells", []) if _pending(sweep.done(c), retry_failed)]
        state, error = _job_state(sweep, rec)
        rec.update(state=state, checked_utc=_now(), open_cells=open_cells)
        if error:
            rec["error"] = error
        if state in ACTIVE_STATES:
            running.append(rec)
        else:                                        # ended: its open cells are pending again
            rec["closed"] = True
            if open_cells:
                rec["freed_claims"] = sweep.drop_claims_of([rec["job_id"]])
                failed.append(rec)
        _write_job(sweep, rec)
    return running, failed


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def launch_sweep(spec: SweepSpec, out_dir: str | os.PathLike, *, launcher: str, shard=None, jobs: int | None = None,
                 retry_failed: bool = False, slurm: SlurmOptions = SlurmOptions(), wait: bool | None = None,
                 run_cell=None, load_model=None) -> LaunchResult:
    """Reconcile earlier jobs, submit the pending cells as one array job, and (``wait``; default: local only) wait
    for it. ``jobs``: array tasks (default one per pending cell). ``run_cell``, ``load_model`` (tests): passed to
    run_sweep in every task."""
    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs must be >= 1, got {jobs}")
    wait = (launcher == "local") if wait is None else wait
    grid = cells(spec)                                 # validates the grid and its data before anything is written
    mine = shard_cells(grid, shard)
    order = {c.cell_id: c.index for c in grid}
    sweep = SweepDir(out_dir)
    sweep.check()
    check_launcher(launcher)                           # before anything is written
    sweep.prepare()
    executor = _executor(launcher, _jobs_dir(sweep) / "submitit", slurm)
    running, failed = reconcile(sweep, retry_failed)
    held = {c for r in running for c in r.get("open_cells", [])}
    pending = [c for c in mine if _pending(sweep.done(c.cell_id), retry_failed) and c.cell_id not in held]
    result = LaunchResult(SweepResult(sweep.path, pd.DataFrame()), running=running, failed_jobs=failed)
    if pending:
        n = min(jobs or len(pending), len(pending))
        slices = [[c.cell_id for c in pending[k::n]] for k in range(n)]
        shard_arg = as_shard(shard)
        with executor.batch():
            handles = [executor.submit(SweepTask(), spec, str(sweep.path), shard_arg, ids, retry_failed, run_cell,
                                       load_model) for ids in slices]
        for job, ids in zip(handles, slices):
            rec = {"job_id": str(job.job_id), "launcher": launcher, "state": "SUBMITTED", "cells": ids,
                   "open_cells": ids, "submitted_utc": _now(), "folder": str(Path(job.paths.folder)),
                   "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
                   "result": str(job.paths.result_pickle)}
            _write_job(sweep, rec)
            result.submitted.append(rec)
        if wait:
            for job in handles:
                try:
                    job.wait()
                except Exception:  # noqa: BLE001 -- a dead job is recorded by reconcile below
                    pass
            result.waited = True
            _, result.failed_jobs = reconcile(sweep, retry_failed)
            result.failed_jobs = failed + result.failed_jobs
    _write_jobs_table(sweep)
    before = set(read_sweep_csv(sweep.csv)["cell_id"]) if sweep.csv.exists() else set()
    if sweep.finished():
        result.sweep.frame = sweep.rebuild_csv(order)
    elif sweep.csv.exists():
        result.sweep.frame = read_sweep_csv(sweep.csv)
    done_now = sweep.finished()
    # cells this call submitted and saw finish, and those earlier jobs finished since sweep.csv was last written
    # (sweep.md is re-rendered for both: jobs that ran without waiting leave the report to the next call)
    ran = list(dict.fromkeys([c for r in result.submitted for c in r["cells"] if c in done_now]
                             + [c for c in done_now if c not in before]))
    result.sweep.ran = ran
    result.sweep.failed = [c for c in ran if done_now[c].get("status") != "ok"]
    result.sweep.skipped = len(mine) - len(pending) - len(held)
    return result
