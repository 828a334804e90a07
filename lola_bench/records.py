"""Run directories: config.json + summary.csv/.md + predictions.jsonl, written atomically.

A run is staged in a hidden sibling directory and renamed into place only when it finished, so a run
that dies leaves no half-written result directory. An existing run directory is never overwritten
unless asked (``overwrite=True``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from .errors import UserError


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a file via a temp file in the same directory + rename (readers never see a partial file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return True


def to_jsonable(obj):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and obj != obj:
        return None
    if hasattr(obj, "item") and callable(obj.item):
        try:
            return obj.item()
        except (ValueError, RuntimeError):
            pass
    return obj


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


INT_COLUMNS = ("window", "lambda", "sinks", "chunk", "n", "ctx", "num_fewshot", "index", "seed")


def with_int_columns(df: pd.DataFrame) -> pd.DataFrame:
    """The integer columns (INT_COLUMNS present in ``df``) as pandas' nullable Int64, so that a table writes
    ``64``, not ``64.0``, and an empty cell stays empty; a column holding anything but whole numbers is left alone."""
    out = df
    for c in INT_COLUMNS:
        if c not in df.columns:
            continue
        try:
            num = pd.to_numeric(df[c])
            if not ((num.dropna() % 1) == 0).all():
                continue
            col = num.astype("Int64")
        except (ValueError, TypeError):
            continue
        if out is df:
            out = df.copy()
        out[c] = col
    return out


def frame_to_csv(df: pd.DataFrame) -> str:
    """A table as CSV text: integers as integers, empty cells empty (never 'None' or 'nan')."""
    return with_int_columns(df).to_csv(index=False)


def frame_to_markdown(df: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """Markdown table without the optional tabulate dependency (integers as integers, empty cells empty)."""
    df = with_int_columns(df)

    def fmt(x):
        if x is None or x is pd.NA:
            return ""
        if isinstance(x, float):
            return "" if x != x else format(x, floatfmt)
        return str(x)

    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(x) for x in row) + " |")
    return "\n".join(lines) + "\n"


MARKER = ".lola-bench-run"           # written into every run and sweep directory lola-bench creates


def _is_protected(path: Path) -> str | None:
    """Why ``path`` may never be replaced or written as a run directory (None if it may)."""
    p = path.resolve()
    cwd = Path.cwd().resolve()
    if p == cwd:
        return "is the working directory"
    if p in cwd.parents:
        return "is a parent of the working directory"
    home = Path.home().resolve()
    if p == home or p in home.parents:
        return "is the home directory or above it"
    if (p / ".git").exists():
        return "holds a git repository"
    return None


def made_by_lola_bench(path: Path) -> bool:
    """Whether lola-bench wrote this directory: its marker file, or (runs made before the marker existed) a
    config.json with lola-bench's ``command`` and ``provenance`` keys."""
    if (path / MARKER).is_file():
        return True
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "command" in cfg and "provenance" in cfg


def check_output_dir(path: str | os.PathLike, overwrite: bool = False, what: str = "run directory") -> Path:
    """Refuse an output directory that would lose data, before any work starts (one-line UserError).

    A new directory may be created anywhere writable. An existing non-empty one is replaced only with
    ``overwrite`` and only if lola-bench wrote it (it holds the ``MARKER`` file); the working directory, its
    parents, the home directory and any git checkout are never replaced. Writability is checked with a probe file.
    """
    path = Path(path)
    why = _is_protected(path)
    if why:
        raise UserError(f"--out {path} {why}: give a new or lola-bench-made directory")
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is a file, not a directory")
    if path.is_dir() and any(not p.name.startswith(PROBE_PREFIX) for p in path.iterdir()):  # another's probe: empty
        if not made_by_lola_bench(path):
            raise UserError(f"--out {path} is a non-empty directory that lola-bench did not write: "
                            f"refusing to {'replace' if overwrite else 'use'} it")
        if not overwrite:
            raise UserError(f"{what} {path} already exists: choose another --out or pass --overwrite")
    probe_writable(path.parent if not path.is_dir() else path)
    return path


PROBE_PREFIX = ".lola-bench-probe-"


def probe_writable(directory: Path) -> None:
    """Check that ``directory`` can be created (if missing) and written, with a probe file in it or in its nearest
    existing ancestor, leaving nothing behind; a one-line UserError otherwise."""
    directory = Path(directory)
    base = directory
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise UserError(f"cannot write to {directory}: {base} is a file, not a directory")
    try:
        fd, tmp = tempfile.mkstemp(dir=base, prefix=PROBE_PREFIX)
        try:
            os.write(fd, b"probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(tmp)
    except OSError as e:
        raise UserError(f"cannot write to {directory}: {e.strerror or e} (nothing was written)") from None


def fs_error(e: OSError, target: Path, kept: str) -> UserError:
    """One line for a filesystem failure while writing results: what failed and what was kept."""
    return UserError(f"could not write {target}: {e.strerror or e} ({kept})")


class RunDir:
    """``with RunDir(path) as run: run.write_json(...)`` — staged, then moved into place on success.

    The run is written into a hidden sibling staging directory; on success an existing run directory (one
    lola-bench wrote, replaced only with ``overwrite``) is first moved aside, the new one renamed into place,
    and only then the old one removed, so a crash at any moment leaves either the old or the new run.

    Under a multi-process launch (distributed.world()) only rank 0 writes the run directory: the other ranks
    stage into a private temporary directory that is discarded, so the same code runs on every rank.
    """

    def __init__(self, path: str | os.PathLike, overwrite: bool = False):
        self.path = check_output_dir(path, overwrite)
        self.overwrite = overwrite
        self.stage: Path | None = None

    def __enter__(self) -> RunDir:
        from .distributed import world

        if not world().is_main:                  # a data-parallel helper rank: write nowhere
            self.stage = Path(tempfile.mkdtemp(prefix="lola-bench-rank-"))
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.stage = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.path.name}.partial-"))
            (self.stage / MARKER).write_text("run\n")
        except OSError as e:
            if self.stage is not None:
                shutil.rmtree(self.stage, ignore_errors=True)
            raise fs_error(e, self.path, "nothing was written") from None
        return self

    def file(self, name: str) -> Path:
        return self.stage / name

    def write_json(self, name: str, obj) -> None:
        atomic_write_json(self.file(name), obj)

    def write_text(self, name: str, text: str) -> None:
        atomic_write_text(self.file(name), text)

    def write_table(self, stem: str, df: pd.DataFrame, title: str | None = None, notes: str = "") -> None:
        self.write_text(f"{stem}.csv", frame_to_csv(df))
        md = (f"# {title}\n\n" if title else "") + frame_to_markdown(df) + (f"\n{notes}\n" if notes else "")
        self.write_text(f"{stem}.md", md)

    def append_jsonl(self, name: str, rows) -> None:
        with open(self.file(name), "a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(to_jsonable(r)) + "\n")

    def __exit__(self, exc_type, exc, tb):
        from .distributed import world

        if not world().is_main:
            shutil.rmtree(self.stage, ignore_errors=True)
            return False
        if exc_type is not None:
            shutil.rmtree(self.stage, ignore_errors=True)
            if isinstance(exc, OSError):
                old = "the previous run is untouched" if self.path.exists() else "nothing was kept"
                raise fs_error(exc, self.path, old) from None
            return False
        try:
            self._swap_in()
        except OSError as e:
            shutil.rmtree(self.stage, ignore_errors=True)
            raise fs_error(e, self.path, "the previous run, if any, is untouched") from None
        return False

    def _swap_in(self) -> None:
        aside = None
        if self.path.exists():
            if any(self.path.iterdir()):
                if not self.overwrite or not made_by_lola_bench(self.path):
                    shutil.rmtree(self.stage, ignore_errors=True)
                    raise UserError(f"run directory {self.path} appeared while running: results left unsaved")
                aside = self.path.parent / f".{self.path.name}.old-{os.getpid()}-{time.time_ns()}"
                os.replace(self.path, aside)
            else:
                self.path.rmdir()
        try:
            os.replace(self.stage, self.path)
        except OSError:
            if aside is not None:
                os.replace(aside, self.path)
            raise
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


class ResumeStore:
    """Finished pieces of an interrupted run, kept in a hidden sibling of its run directory.

    ``save(part, key, record)`` writes one piece atomically as soon as it is done; ``load(part, key)``
    returns it on a later run only if ``key`` (the settings that produced it) is unchanged, so a run
    with other settings never picks up stale pieces. ``clear()`` removes the store once the run
    directory itself has been written.
    """

    def __init__(self, run_path: str | os.PathLike):
        run_path = Path(run_path)
        self.path = run_path.parent / f".{run_path.name}.resume"

    @staticmethod
    def _name(part: str) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in part) + ".json"

    def load(self, part: str, key) -> dict | None:
        f = self.path / self._name(part)
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("key") != to_jsonable(key):
            return None
        return data.get("record")

    def save(self, part: str, key, record) -> None:
        from .distributed import world

        if not world().is_main:                  # data-parallel runs: rank 0 keeps the store
            return
        atomic_write_json(self.path / self._name(part), {"key": key, "record": record})

    def clear(self) -> None:
        from .distributed import world

        if world().is_main:
            shutil.rmtree(self.path, ignore_errors=True)


def cell_hash(config: dict) -> str:
    """sha256 of canonical JSON (sorted keys, no whitespace), first 16 hex digits."""
    text = json.dumps(to_jsonable(config), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_FINGERPRINTS: dict[tuple, str] = {}


def fingerprint(path: str | os.PathLike, exclude: tuple[str, ...] = ()) -> str:
    """Content hash of a file or a directory tree (relative names + contents), independent of its location."""
    p = Path(path).expanduser()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()
                                           and f.relative_to(p).as_posix() not in exclude)
    key = (str(p.resolve()), exclude, tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if key not in _FINGERPRINTS:
        h = hashlib.sha256()
        for f in files:
            if f is not p:
                h.update(f.relative_to(p).as_posix().encode() + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            h.update(b"\0")
        _FINGERPRINTS[key] = h.hexdigest()[:16]
    return _FINGERPRINTS[key]
