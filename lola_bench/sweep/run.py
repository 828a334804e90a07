"""Running a sweep: the pending cells of a grid (or of one shard), each through the ordinary runners, into a
SweepDir; and the dry run (plan_sweep) with its ETA.

run_sweep writes sweep.csv but no report: its caller renders sweep.md and the plots once it returns
(lola_bench.report.render_sweep_result), so this package never imports lola_bench.report.
"""

from __future__ import annotations

import gc
import math
import os
import shutil
import socket
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..errors import UserError
from ..records import atomic_write_json
from ..settings import variant_columns
from .grid import Cell, SweepSpec, _resolved_device, cells
from .shard import as_shard, shard_cells
from .store import SWEEP_COLUMNS, SweepDir, read_sweep_csv, tidy

Progress = Callable[[int, "str | None"], None]   # progress(advance, description), as for run_ruler


@dataclass
class CellOutput:
    """What run_cell returns: summary rows (any SWEEP_COLUMNS), per-sample predictions, raw results."""

    rows: pd.DataFrame
    predictions: list[dict] = field(default_factory=list)
    raw: dict | None = None


def default_load_model(spec: SweepSpec):
    from ..models.loading import load_model

    return load_model(spec.model, spec.device, spec.dtype)


def _device_label(loaded) -> str:
    from ..provenance import device_label

    return device_label(getattr(loaded, "device", "cpu"))


def default_run_cell(loaded, cell: Cell, progress: Progress | None = None) -> CellOutput:
    """Run one cell with the ordinary runners: run_ruler (one variant) or run_commonsense (one task)."""
    c = cell.config
    if c.suite == "ruler":
        from ..evals.ruler_bench import RulerSettings, run_ruler

        rs = RulerSettings(tasks=(c.task,), ctxs=(c.ctx,), samples=c.samples, seed=c.seed,
                           essay_path=cell.essay_path, qa_path=cell.qa_path, chat_template=c.chat_template,
                           diagnostics=cell.diagnostics, decode_mode=c.decode or "eager",
                           prefill_logits=c.prefill_logits or "all")
        out = run_ruler(loaded, [c.attention], rs, ckpt=cell.ckpt_path, device_label=_device_label(loaded),
                        progress=progress)
        return CellOutput(out.summary, out.predictions, {"chat_template_applied": out.chat_template})

    from ..evals.commonsense.run import CommonsenseSettings, run_commonsense_variants, sweep_row

    settings = CommonsenseSettings((c.task,), cell.data_dir, c.limit, c.num_fewshot, cell.batch_size)
    out = run_commonsense_variants(loaded, [c.attention], settings, ckpt=cell.ckpt_path,
                                   device_label=_device_label(loaded))
    return CellOutput(sweep_row(out.summary, c.num_fewshot), [], {"lm_eval": out.raw[c.attention.mode],
                                                                    "rows": out.summary.to_dict("records")})


def _classify(exc: BaseException) -> str:
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return "oom"
    except ImportError:
        pass
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return "oom"
    return "error"


def _recover() -> None:
    """Free what a failed cell left behind (CUDA cache)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def _check_context(spec: SweepSpec, loaded) -> None:
    max_ctx = int(getattr(loaded, "max_context", 0) or 0)
    if spec.suite == "ruler" and max_ctx:
        over = [c for c in spec.ctxs if c > max_ctx]
        if over:
            raise UserError(f"--ctx {over[0]} exceeds the model's maximum context of {max_ctx} tokens")


def _pending(info: dict | None, retry_failed: bool) -> bool:
    """Whether a cell with this done.json (None: not finished) still has to run."""
    return info is None or (retry_failed and info.get("status") != "ok")


@dataclass
class SweepResult:
    out_dir: Path
    frame: pd.DataFrame                               # sweep.csv
    ran: list[str] = field(default_factory=list)      # cell ids run by this call
    failed: list[str] = field(default_factory=list)   # ... of which failed (oom / error)
    skipped: int = 0                                  # cells of this shard already done
    elsewhere: list[str] = field(default_factory=list)  # pending cells another worker finished or is running


def run_sweep(spec: SweepSpec, out_dir: str | os.PathLike, *, shard: tuple[int, int] | str | None = None,
              retry_failed: bool = False, load_model: Callable | None = None, run_cell: Callable | None = None,
              progress: Progress | None = None, only=None) -> SweepResult:
    """Run the pending cells of ``spec`` (of one shard) into ``out_dir``; finished cells are skipped.

    Nothing is written before every check passed: the grid and its data (``cells``), the directory
    (``SweepDir.check``) and, when cells are pending, the model's maximum context, so ``load_model(spec) -> loaded``
    is called once before the sweep directory is prepared (never when every cell is done). Each pending cell is
    claimed (a lock file in cells/.claims) before it runs: workers sharing the directory split the cells instead of
    repeating them. A filesystem error (disk full, read-only) stops the sweep with a one-line UserError; the
    finished cells and the last sweep.csv are kept. ``run_cell(loaded, cell, progress) -> CellOutput`` runs one
    cell. A cell that raises (anything but KeyboardInterrupt/SystemExit) is recorded with status "oom" or "error"
    and the sweep goes on. ``progress(advance, description)``: one unit per pending cell. Writes no report: the
    caller renders sweep.md and the plots from the result (``lola_bench.report.render_sweep_result``).
    ``only``: run no cells but these ids (of the shard) -- what one launcher job is given (sweep.launch).
    """
    load_model = load_model or default_load_model
    run_cell = run_cell or default_run_cell
    grid = cells(spec)
    mine = shard_cells(grid, shard)
    if only is not None:
        only = set(only)
        mine = [c for c in mine if c.cell_id in only]
    order = {c.cell_id: c.index for c in grid}
    sweep = SweepDir(out_dir)
    sweep.check()
    fresh = not sweep.path.exists()
    try:
        return _run_pending(spec, sweep, grid, mine, order, shard, retry_failed, load_model, run_cell, progress)
    except UserError:
        if fresh and not sweep.finished():       # a new directory that got no cell: leave nothing behind
            shutil.rmtree(sweep.path, ignore_errors=True)
        raise


def _run_pending(spec, sweep, grid, mine, order, shard, retry_failed, load_model, run_cell, progress):
    pending = [c for c in mine if _pending(sweep.done(c.cell_id), retry_failed)]
    loaded = None
    if pending:
        loaded = load_model(spec)
        _check_context(spec, loaded)
    with _fs_errors(sweep, "prepare the sweep directory"):
        sweep.prepare()
        if pending or not (sweep.path / "config.json").exists():
            from ..provenance import provenance

            shard = as_shard(shard)
            atomic_write_json(sweep.path / "config.json", {
                "command": "sweep", "sweep": spec.to_dict(), "shard": f"{shard[0]}/{shard[1]}" if shard else None,
                "cells": len(grid), "cells_in_shard": len(mine), "provenance": provenance(_resolved_device(spec)[0])})
    result = SweepResult(sweep.path, pd.DataFrame(columns=SWEEP_COLUMNS), skipped=len(mine) - len(pending))
    for i, cell in enumerate(pending, 1):
        with _fs_errors(sweep, f"claim cell {cell.cell_id}"):
            mine_now = _pending(sweep.done(cell.cell_id), retry_failed) and sweep.claim(cell.cell_id)
        if not mine_now:                               # finished or being run by a worker sharing the dir
            result.elsewhere.append(cell.cell_id)
            if progress:
                progress(1, None)
            continue
        try:
            if not _pending(sweep.done(cell.cell_id), retry_failed):   # finished just before our claim
                result.elsewhere.append(cell.cell_id)
                if progress:
                    progress(1, None)
                continue
            _run_one(sweep, cell, i, len(pending), loaded, run_cell, order, result, progress)
        finally:
            sweep.release(cell.cell_id)
    if not result.ran:
        result.frame = read_sweep_csv(sweep.csv) if sweep.csv.exists() else sweep.rebuild_csv(order)
    return result


def _run_one(sweep: SweepDir, cell: Cell, i: int, n: int, loaded, run_cell, order, result: SweepResult,
             progress: Progress | None) -> None:
    prefix = f"[{i}/{n}] {cell.label}"
    if progress:
        progress(0, prefix)

    def sub(advance, desc):     # the runner's per-sample steps: description only
        if progress and desc:
            progress(0, f"{prefix}: {desc}")

    t0 = time.perf_counter()
    try:
        out, status, error, error_text = run_cell(loaded, cell, sub), "ok", None, None
    except Exception as e:   # noqa: BLE001 -- a failing cell must not stop the sweep
        out, status = None, _classify(e)
        error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500]
        error_text = traceback.format_exc()
        _recover()
    wall = time.perf_counter() - t0
    rows = _cell_rows(cell, out, status, error, wall, loaded)
    info = {"cell_id": cell.cell_id, "status": status, "error": error, "wall_s": round(wall, 3),
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": socket.gethostname(),
            "model_source": getattr(loaded, "source", None), "label": cell.label,
            "config": cell.config.to_dict()}
    with _fs_errors(sweep, f"write cell {cell.cell_id} ({cell.label})"):
        sweep.commit(cell, rows, info, predictions=out.predictions if out else None,
                     raw=out.raw if out else None, error_text=error_text)
    result.ran.append(cell.cell_id)
    if status != "ok":
        result.failed.append(cell.cell_id)
    with _fs_errors(sweep, "rebuild sweep.csv"):
        result.frame = sweep.rebuild_csv(order)
    if progress:
        progress(1, f"{prefix}: {status}" if status != "ok" else None)


class _fs_errors:
    """An OSError while writing the sweep directory -> one line: what failed and what was kept."""

    def __init__(self, sweep: SweepDir, what: str):
        self.sweep, self.what = sweep, what

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or not isinstance(exc, OSError):
            return False
        kept = len(self.sweep.finished())
        raise UserError(f"could not {self.what} in {self.sweep.path}: {exc.strerror or exc} (kept: {kept} finished "
                        f"cell(s) and sweep.csv as of the last one; nothing half-written; rerun to resume)") from None


def _cell_rows(cell: Cell, out: CellOutput | None, status: str, error: str | None, wall: float,
               loaded) -> pd.DataFrame:
    """The cell's rows in SWEEP_COLUMNS: the runner's summary, or one row describing the failed cell."""
    c = cell.config
    if out is not None and not out.rows.empty:
        df = out.rows.copy()
    else:
        df = pd.DataFrame([{**variant_columns(c.attention), "model": c.model, "task": c.task, "ctx": c.ctx,
                            "device": _device_label(loaded) if loaded is not None else None}])
        if status == "ok":
            status, error = "error", "the cell produced no rows"
    df["cell_id"], df["suite"], df["status"], df["error"] = cell.cell_id, c.suite, status, error
    df["wall_s"] = round(wall, 3)
    if cell.budgets_mib:                               # equal-memory sweeps: the budget this lambda was fitted to
        df["budget_mib"] = cell.budget_mib
    if c.attention.mode == "base":
        df["scorer"] = None                            # lambda = 0: no sparse cache, the scorer plays no part
    return tidy(df)


# ---- dry run, reading, merging --------------------------------------------------------------------

def plan_sweep(spec: SweepSpec, out_dir: str | os.PathLike, *, shard: tuple[int, int] | str | None = None,
               retry_failed: bool = False) -> pd.DataFrame:
    """The grid (of one shard) with each cell's status and an ETA for the pending ones.

    A pending cell's estimate is the mean wall time of the finished, successful cells of the same suite and
    ctx in ``out_dir`` (else of the same suite; NaN when none finished). ``df.attrs``: total, done, pending,
    eta_s (sum of the estimates, NaN if none could be made).
    """
    grid = cells(spec)
    mine = shard_cells(grid, shard)
    sweep = SweepDir(out_dir)
    finished = sweep.finished()
    ok = [(i.get("config", {}).get("suite"), i.get("config", {}).get("ctx"), i.get("wall_s"))
          for i in finished.values() if i.get("status") == "ok" and i.get("wall_s") is not None]

    def estimate(c: Cell) -> float:
        for match in (lambda s, x: s == c.config.suite and x == c.config.ctx, lambda s, x: s == c.config.suite):
            walls = [w for s, x, w in ok if match(s, x)]
            if walls:
                return statistics.mean(walls)
        return float("nan")

    rows = []
    for c in mine:
        info = finished.get(c.cell_id)
        pending = _pending(info, retry_failed)
        status = "pending" if info is None else (f"{info.get('status')} (retry)" if pending else info.get("status"))
        rows.append({**c.describe(), "status": status, "pending": pending,
                     "wall_s": info.get("wall_s") if info else float("nan"),
                     "eta_s": estimate(c) if pending else 0.0, "label": c.label})
    df = pd.DataFrame(rows)
    todo = df.loc[df["pending"], "eta_s"] if len(df) else pd.Series(dtype=float)
    df.attrs.update(total=len(df), done=len(df) - len(todo), pending=len(todo),
                    eta_s=float(todo.sum(skipna=False)) if len(todo) else 0.0)
    return df


def format_eta(seconds: float) -> str:
    if math.isnan(seconds):
        return "unknown (no finished cell to time yet)"
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
