"""The on-disk state of a sweep directory, and its one table, sweep.csv (SWEEP_COLUMNS: the store owns them).

Layout of a sweep directory::

    config.json              the SweepSpec + provenance of the latest invocation (and its shard)
    sweep.csv                tidy results: one row per finished cell (x task x ctx), SWEEP_COLUMNS
    sweep.md, *.png          report (lola_bench.report.render_sweep_report; rendered by the caller of run_sweep)
    cells/<cell_id>/         one finished cell: summary.csv (its sweep.csv rows), predictions.jsonl (ruler),
                             results.json (runner extras: lm-eval results, chat template flag),
                             error.txt (traceback of a failed cell), done.json (status, wall time; written last)
    cells/.staging/          cells being written; renamed to cells/<cell_id> only when finished
    cells/.claims/<id>.lock  the worker running a cell (host, pid, launcher job id): created atomically, removed
                             when it finishes
    jobs/                    sweep --launcher slurm|local: one record per submitted job (sweep.launch)

Resume: a cell is done when ``cells/<cell_id>/done.json`` exists. Cells are staged and renamed into place,
so a cell killed mid-way leaves nothing in ``cells/`` and is simply run again; ``sweep.csv`` is rebuilt
(atomically, under a lock) from the finished cells after each one. Failed cells (status "oom" or
"error") count as done.

Claims: a worker runs a cell only after creating its lock file (hard link of a complete file: atomic, also
over NFS), so several workers on one directory split the pending cells instead of repeating them. A lock
whose owner is a dead process of this host is taken over; locks of other hosts are trusted.

Shards may write to their own directories (then merge with ``merge_sweeps`` / ``lola-bench report DIR...``)
or to one shared directory (cells are renamed atomically and sweep.csv is rebuilt under a file lock).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ..errors import UserError
from ..records import MARKER, atomic_write_json, atomic_write_text, check_output_dir, frame_to_csv, to_jsonable

if TYPE_CHECKING:
    from .grid import Cell

# The RULER runner's summary columns (evals.ruler_bench.SUMMARY_COLUMNS, in its order) sit between the
# bookkeeping columns and the commonsense extras; the sweep tests check that every runner column has its
# place here.
SWEEP_COLUMNS = ["cell_id", "suite", "status", "error",
                 "model", "attn", "window", "lambda", "sinks", "scorer", "feature_map", "evict_at", "task",
                 "ctx", "n",
                 "accuracy", "accuracy_ci_low", "accuracy_ci_high",
                 "ttft_s", "decode_ms_per_token", "peak_mem_mib", "cache_mib", "full_kv_mib", "window_mib",
                 "sparse_mib", "state_mib", "phi_k_mib", "mean_prompt_tokens", "combine", "gqa", "chunk",
                 "settings_from", "implementation", "decode_impl", "prefill_logits", "threads", "checkpoint", "device",
                 "chat_template", "needle_kept",
                 "acc_norm", "accuracy_stderr", "num_fewshot", "wall_s"]
STATUSES = ("ok", "oom", "error")
JOB_ENV = "LOLA_BENCH_JOB_ID"     # set by a launcher job (sweep --launcher): recorded in the claims it takes
_STATUS_RANK = {"ok": 0, "oom": 1, "error": 2}


class SweepDir:
    """The on-disk state of one sweep: finished cells, staging, sweep.csv."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.cells_dir = self.path / "cells"
        self.staging = self.cells_dir / ".staging"
        self.claims = self.cells_dir / ".claims"
        self.csv = self.path / "sweep.csv"
        self._tokens: dict[str, str] = {}       # cell id -> token of the claims this object holds

    def check(self) -> None:
        """Refuse a directory that is not (or cannot become) a sweep directory, before any work starts. A sweep
        directory is resumed, never replaced: an existing one must be lola-bench's (its marker), a new or empty one
        is fine. (Validation only: nothing is removed.)"""
        check_output_dir(self.path, overwrite=True, what="sweep directory")

    def prepare(self) -> None:
        """Check, then create the directory with its marker first, so a second worker starting at the same moment
        never sees a non-empty directory without the marker."""
        self.check()
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / MARKER).touch()
        self.staging.mkdir(parents=True, exist_ok=True)
        self.claims.mkdir(exist_ok=True)
        self._clean_stale_staging()

    def _clean_stale_staging(self) -> None:
        """Remove staged cells left by dead processes of this host (others may belong to live shards)."""
        host = socket.gethostname()
        for d in self.staging.iterdir() if self.staging.is_dir() else []:
            parts = d.name.split(".")
            if len(parts) >= 4 and parts[1] == host and parts[2].isdigit() and not _pid_alive(int(parts[2])):
                shutil.rmtree(d, ignore_errors=True)

    def claim(self, cell_id: str) -> bool:
        """Claim a cell for this worker: True if it is ours now (a new lock, or one left by a dead process of this
        host), False if another live worker holds it. Atomic: the lock is a hard link of a complete file."""
        self.claims.mkdir(parents=True, exist_ok=True)
        lock = self.claims / f"{cell_id}.lock"
        token = uuid.uuid4().hex
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": token,
                 "since_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "job": os.environ.get(JOB_ENV)}      # the launcher's job id (sweep --launcher), else None
        fd, tmp = tempfile.mkstemp(dir=self.claims, prefix=f".{cell_id}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(owner, f)
            with open(self.path / ".sweep.lock", "a") as dirlock:   # serialises take-overs on this host
                fcntl.flock(dirlock, fcntl.LOCK_EX)
                if not _create_exclusive(tmp, lock):
                    if not _stale_claim(lock):
                        return False
                    os.replace(tmp, lock)               # the dead owner's lock becomes ours
        finally:
            with _quiet():
                os.unlink(tmp)
        self._tokens[cell_id] = token
        return True

    def claim_owner(self, cell_id: str) -> dict | None:
        try:
            return json.loads((self.claims / f"{cell_id}.lock").read_text())
        except (OSError, ValueError):
            return None

    def release(self, cell_id: str) -> None:
        """Remove this worker's claim on a cell (never another worker's)."""
        token = self._tokens.pop(cell_id, None)
        owner = self.claim_owner(cell_id)
        if token is not None and owner is not None and owner.get("token") == token:
            with _quiet():
                (self.claims / f"{cell_id}.lock").unlink()

    def drop_claims_of(self, job_ids) -> list[str]:
        """Remove the claims held by the given launcher jobs (known dead: failed, pre-empted, cancelled), so their
        cells can run elsewhere; returns the cell ids freed."""
        job_ids, freed = {str(j) for j in job_ids}, []
        for lock in sorted(self.claims.glob("*.lock")) if self.claims.is_dir() else []:
            owner = self.claim_owner(lock.stem)
            if owner is not None and owner.get("job") is not None and str(owner["job"]) in job_ids:
                with _quiet():
                    lock.unlink()
                    freed.append(lock.stem)
        return freed

    def done(self, cell_id: str) -> dict | None:
        """done.json of a finished cell, else None (missing, or unreadable = not finished)."""
        try:
            return json.loads((self.cells_dir / cell_id / "done.json").read_text())
        except (OSError, ValueError):
            return None

    def finished(self) -> dict[str, dict]:
        if not self.cells_dir.is_dir():
            return {}
        out = {}
        for d in sorted(self.cells_dir.iterdir()):
            if d.is_dir() and not d.name.startswith("."):
                info = self.done(d.name)
                if info is not None:
                    out[d.name] = info
        return out

    def commit(self, cell: Cell, rows: pd.DataFrame, info: dict, predictions: list[dict] | None = None,
               raw: dict | None = None, error_text: str | None = None) -> Path:
        """Write a finished cell into staging and rename it into cells/<cell_id> (done.json last)."""
        stage = Path(tempfile.mkdtemp(dir=self.staging,
                                      prefix=f"{cell.cell_id}.{socket.gethostname()}.{os.getpid()}."))
        try:
            stage.chmod(0o755)
            atomic_write_text(stage / "summary.csv", frame_to_csv(rows))
            if predictions:
                with open(stage / "predictions.jsonl", "w", encoding="utf-8") as f:
                    f.writelines(json.dumps(to_jsonable(p)) + "\n" for p in predictions)
            if raw is not None:
                atomic_write_json(stage / "results.json", raw)
            if error_text:
                atomic_write_text(stage / "error.txt", error_text)
            atomic_write_json(stage / "done.json", info)
            target = self.cells_dir / cell.cell_id
            trash = None
            if target.exists():                      # a failed cell being retried, or a broken directory
                trash = self.staging / f"{cell.cell_id}.old.{socket.gethostname()}.{os.getpid()}.{time.time_ns()}"
                os.replace(target, trash)
            try:
                os.replace(stage, target)
            except OSError:
                if trash is not None:                # keep the old result rather than neither
                    os.replace(trash, target)
                    trash = None
                elif self.done(cell.cell_id) is None:
                    raise
                shutil.rmtree(stage, ignore_errors=True)
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
            return target
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise

    def read_rows(self, order: dict[str, int] | None = None) -> pd.DataFrame:
        """Rows of every finished cell (grid order first, then other cells by id)."""
        frames = []
        for cell_id in self.finished():
            try:
                frames.append(pd.read_csv(self.cells_dir / cell_id / "summary.csv"))
            except (OSError, pd.errors.EmptyDataError):
                continue
        df = tidy(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame())
        if order and not df.empty:
            key = df["cell_id"].map(lambda c: (order.get(c, len(order)), c))
            df = df.iloc[sorted(range(len(df)), key=lambda i: key.iloc[i])].reset_index(drop=True)
        return df

    def rebuild_csv(self, order: dict[str, int] | None = None) -> pd.DataFrame:
        """Rewrite sweep.csv from the finished cells, atomically and under a lock (shards may share the dir)."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".sweep.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            df = self.read_rows(order)
            atomic_write_text(self.csv, frame_to_csv(df))
        return df


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        return exc_type is not None and issubclass(exc_type, OSError)


def _create_exclusive(src: str, dest: Path) -> bool:
    """Give ``dest`` the content of ``src`` unless ``dest`` exists (False then): a hard link, or an exclusive create
    where the filesystem has no hard links."""
    try:
        os.link(src, dest)
        return True
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
    try:
        fd = os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f, open(src, "rb") as g:
        f.write(g.read())
    return True


def _stale_claim(lock: Path) -> bool:
    """A claim left by a dead process of this host, or by an earlier run of this very launcher job (requeued after
    pre-emption: same job id); unreadable or foreign-host claims are taken as live."""
    try:
        owner = json.loads(lock.read_text())
        host, pid = owner["host"], int(owner["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    job = os.environ.get(JOB_ENV)
    if job and owner.get("job") == job and (host, pid) != (socket.gethostname(), os.getpid()):
        return True
    return host == socket.gethostname() and not _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tidy(df: pd.DataFrame) -> pd.DataFrame:
    """SWEEP_COLUMNS first (missing ones empty), any extra columns after."""
    extra = [c for c in df.columns if c not in SWEEP_COLUMNS]
    return df.reindex(columns=SWEEP_COLUMNS + extra)



def read_sweep_csv(path: str | os.PathLike) -> pd.DataFrame:
    """A sweep.csv as a frame in SWEEP_COLUMNS; a one-line UserError when it is unreadable or not a sweep table."""
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return tidy(pd.DataFrame())
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path} is not a readable sweep table: {' '.join(str(e).split())[:200]}") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if "cell_id" not in df.columns or "status" not in df.columns:
        raise UserError(f"{path} is not a lola-bench sweep.csv (no cell_id/status columns)")
    return tidy(df)


def merge_sweeps(sources) -> pd.DataFrame:
    """Merge the sweep.csv of several sweep directories (or CSV files), one row per cell x task x ctx.

    A cell present in several sources is kept once: a successful result beats a failed one, otherwise the
    first source wins.
    """
    frames = []
    for n, src in enumerate([sources] if isinstance(sources, (str, os.PathLike)) else sources):
        p = Path(src)
        csv = p / "sweep.csv" if p.is_dir() else p
        if not csv.is_file():
            raise UserError(f"no sweep results at {p} (expected {csv})")
        df = read_sweep_csv(csv)
        df["_source"] = n
        frames.append(df)
    if not frames:
        raise UserError("no sweep directories given")
    df = pd.concat(frames, ignore_index=True)
    df["_rank"] = df["status"].map(_STATUS_RANK).fillna(3)
    winner = df.sort_values(["_rank", "_source"], kind="stable").drop_duplicates("cell_id")[["cell_id", "_source"]]
    df = df.merge(winner, on=["cell_id", "_source"], how="inner")
    df = df.drop_duplicates(subset=["cell_id", "task", "ctx"], keep="first")
    return tidy(df.drop(columns=["_source", "_rank"]).reset_index(drop=True))
