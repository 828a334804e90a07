"""Run directories: config.json + summary.csv/.md + predictions.jsonl, written atomically.

A run is staged in a hidden sibling directory and renamed into place only when it finished, so a run
that dies leaves no half-written result directory. An existing run directory is never overwritten
unless asked (``overwrite=True``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
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


def frame_to_markdown(df: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """Markdown table without the optional tabulate dependency."""
    def fmt(x):
        if isinstance(x, float):
            return "" if x != x else format(x, floatfmt)
        return str(x)

    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(x) for x in row) + " |")
    return "\n".join(lines) + "\n"


class RunDir:
    """``with RunDir(path) as run: run.write_json(...)`` — staged, then moved into place on success."""

    def __init__(self, path: str | os.PathLike, overwrite: bool = False):
        self.path = Path(path)
        self.overwrite = overwrite
        if self.path.exists() and any(self.path.iterdir()) and not overwrite:
            raise UserError(f"run directory {self.path} already exists: choose another --out or pass --overwrite")
        self.stage: Path | None = None

    def __enter__(self) -> RunDir:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.stage = Path(tempfile.mkdtemp(dir=self.path.parent, prefix=f".{self.path.name}.partial-"))
        return self

    def file(self, name: str) -> Path:
        return self.stage / name

    def write_json(self, name: str, obj) -> None:
        atomic_write_json(self.file(name), obj)

    def write_text(self, name: str, text: str) -> None:
        atomic_write_text(self.file(name), text)

    def write_table(self, stem: str, df: pd.DataFrame, title: str | None = None, notes: str = "") -> None:
        self.write_text(f"{stem}.csv", df.to_csv(index=False))
        md = (f"# {title}\n\n" if title else "") + frame_to_markdown(df) + (f"\n{notes}\n" if notes else "")
        self.write_text(f"{stem}.md", md)

    def append_jsonl(self, name: str, rows) -> None:
        with open(self.file(name), "a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(to_jsonable(r)) + "\n")

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.stage, ignore_errors=True)
            return False
        if self.path.exists():
            if not self.overwrite and any(self.path.iterdir()):
                shutil.rmtree(self.stage, ignore_errors=True)
                raise UserError(f"run directory {self.path} appeared while running: results left unsaved")
            shutil.rmtree(self.path)
        os.replace(self.stage, self.path)
        return False


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
        atomic_write_json(self.path / self._name(part), {"key": key, "record": record})

    def clear(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
