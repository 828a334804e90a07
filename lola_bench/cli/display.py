"""Console output for the CLI: one-line errors, progress with ETA (rich on a terminal, plain lines in logs),
result tables."""

from __future__ import annotations

import functools
import sys
import time

import typer
from rich.console import Console
from rich.table import Table

from ..errors import UserError

console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def user_errors(fn):
    """Bad input: one red line on stderr, exit code 2, no traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            if err_console.quiet:                # a data-parallel helper rank: its error, plainly, with its rank
                from ..distributed import world

                print(f"error (rank {world().rank}): {e}", file=sys.stderr)
            else:
                err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
    return wrapper


class LogProgress:
    """Progress for non-terminal stderr (CI logs, nohup, Slurm): a plain line at most every ``every`` seconds."""

    def __init__(self, every: float = 15.0, silent: bool = False):
        self._time, self.every, self.tasks, self.last = time.monotonic, every, {}, 0.0
        self.silent = silent

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:                  # an error is reported on its own line, without a progress line
            for tid in self.tasks:
                self._emit(tid, force=True)
        return False

    def add_task(self, description, total=None):
        tid = len(self.tasks)
        self.tasks[tid] = {"description": description, "total": total, "completed": 0, "start": self._time()}
        return tid

    def update(self, tid, advance=0, completed=None, description=None, total=None, **_):
        t = self.tasks[tid]
        if total is not None:
            t["total"] = total
        t["completed"] = completed if completed is not None else t["completed"] + (advance or 0)
        if "first" not in t:  # a resumed run starts part-way: the rate counts this run's work only
            t["first"] = (t["completed"], self._time())
        if description:
            t["description"] = description
        self._emit(tid)

    def _emit(self, tid, force=False):
        if self.silent:
            return
        now = self._time()
        if not force and now - self.last < self.every:
            return
        self.last = now
        t = self.tasks[tid]
        done, total, el = t["completed"], t["total"], now - t["start"]
        d0, t0 = t.get("first", (0, t["start"]))
        eta = f", ETA {(now - t0) / (done - d0) * (total - done):.0f}s" if done > d0 and total else ""
        line = f"{t['description']}: {done}/{total}{eta}"
        if force and t.get("printed") == line:         # the closing line once, not again after the same update
            return
        t["printed"] = line
        err_console.print(f"[{el:.0f}s] {line}", highlight=False)


def progress():
    from ..distributed import world

    if not world().is_main:                  # data-parallel helper ranks: rank 0 shows the progress
        return LogProgress(every=float("inf"), silent=True)
    if not sys.stderr.isatty():
        return LogProgress()
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=err_console, transient=False)


class Bar:
    """``with Bar("ruler", total) as step: step(advance, description)`` — the runners' progress callback."""

    def __init__(self, name: str, total: int | None):
        self.name, self.total = name, total

    def __enter__(self):
        self._prog = progress().__enter__()
        self._bar = self._prog.add_task(self.name, total=self.total)
        return self

    def __call__(self, advance: int = 0, description: str | None = None) -> None:
        self._prog.update(self._bar, advance=advance, **({"description": description} if description else {}))

    def set(self, completed: int, total: int | None = None, description: str | None = None) -> None:
        self._prog.update(self._bar, completed=completed, **({"total": total} if total is not None else {}),
                          **({"description": description} if description else {}))

    def __exit__(self, *exc):
        return self._prog.__exit__(*exc)


SHORT_NAMES = {"accuracy": "acc", "decode_ms_per_token": "dec ms/tok", "peak_mem_mib": "peak MiB",
               "cache_mib": "cache MiB", "full_kv_mib": "full KV MiB", "ttft_s": "TTFT s",
               "decode_amortized_ms_per_token": "dec ms/tok (chunk avg)", "decode_impl": "decode timed as"}


def print_frame(df, title, columns=None):
    t = Table(title=title)
    cols = [c for c in (columns or list(df.columns)) if c in df.columns]
    for c in cols:
        t.add_column(SHORT_NAMES.get(c, str(c)), justify="right" if df[c].dtype.kind in "fi" else "left",
                     overflow="fold")
    for row in df[cols].itertuples(index=False):
        t.add_row(*[("" if x != x else f"{x:.3g}") if isinstance(x, float) else ("" if x is None else str(x))
                    for x in row])
    console.print(t)
