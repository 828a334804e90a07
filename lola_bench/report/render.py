"""Writing a sweep's report (sweep.md and the plots) from its rows, and re-rendering from sweep.csv alone."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ..errors import UserError
from ..records import atomic_write_text, frame_to_csv
from ..sweep.store import merge_sweeps, tidy
from .commonsense import render_commonsense_report
from .metric_compare import KINDS, render_metric_report
from .ruler_compare import is_ruler_summary, render_ruler_report
from .sweep_plots import sweep_plots
from .sweep_tables import sweep_markdown

if TYPE_CHECKING:
    from ..sweep.run import SweepResult


def render_sweep_report(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Write sweep.md and the PNG plots into ``out_dir``; return their paths (sweep.md first)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = sweep_plots(tidy(df), out_dir)
    path = out_dir / "sweep.md"
    atomic_write_text(path, sweep_markdown(df, plots))
    return [path, *plots]


def render_sweep_result(result: SweepResult) -> list[Path]:
    """The report after ``run_sweep``: sweep.md and the plots in ``result.out_dir`` when this call ran cells or
    sweep.md is missing, and nothing when sweep.csv has no rows. Returns the files written (none: left as is)."""
    out_dir = Path(result.out_dir)
    if result.frame.empty or not (result.ran or not (out_dir / "sweep.md").exists()):
        return []
    return render_sweep_report(result.frame, out_dir)


def _run_kind(d: Path) -> str:
    """ruler / commonsense / another command's name, from the run's config.json (else its summary's columns)."""
    import json

    try:
        cmd = json.loads((d / "config.json").read_text(encoding="utf-8")).get("command")
    except (OSError, ValueError, AttributeError):
        cmd = None
    if isinstance(cmd, str):
        return cmd
    try:
        cols = set(pd.read_csv(d / "summary.csv", nrows=0).columns)
    except (OSError, ValueError):
        return "unknown"
    if "metric" in cols:
        return "commonsense"
    if is_ruler_summary(pd.DataFrame(columns=list(cols))):
        return "ruler"
    if "perplexity" in cols:
        return "perplexity"
    return "speed" if {"ttft_s", "decode_ms_per_token"} <= cols else "unknown"


def render_report(dirs, out_dir: str | Path | None = None) -> list[Path]:
    """Re-render sweep.md and the plots from sweep.csv file(s) alone (no model, no cells/).

    One directory: written into it. Several: merged (deduplicated by cell_id) into ``out_dir``, which then
    also gets the merged sweep.csv. Run directories of one kind (summary.csv, no sweep.csv: ruler, commonsense,
    speed, perplexity) get a side-by-side comparison of their runs and variants instead.
    """
    dirs = [Path(dirs)] if isinstance(dirs, (str, Path)) else [Path(d) for d in dirs]
    if dirs and all((d / "summary.csv").is_file() and not (d / "sweep.csv").is_file() for d in dirs):
        kinds = {_run_kind(d) for d in dirs}
        if len(kinds) > 1:
            raise UserError(f"cannot compare runs of different kinds ({', '.join(sorted(kinds))}) side by side")
        kind = kinds.pop()
        if out_dir is None and len(dirs) > 1:
            raise UserError(f"several {kind} runs given: pass --out DIR for the comparison")
        if kind == "ruler":
            return render_ruler_report(dirs, out_dir if out_dir is not None else dirs[0])
        if kind in KINDS:
            return render_metric_report(kind, dirs, out_dir if out_dir is not None else dirs[0])
        if kind not in ("commonsense", "unknown"):       # unknown: the commonsense reader says what is wrong
            raise UserError(f"report compares ruler, commonsense, speed, perplexity and sweep results; {dirs[0]} is "
                            f"a {kind} run")
        return render_commonsense_report(dirs, out_dir if out_dir is not None else dirs[0])
    df = merge_sweeps(dirs)
    if out_dir is None:
        if len(dirs) > 1:
            raise UserError("several sweeps given: pass --out DIR for the merged report")
        return render_sweep_report(df, dirs[0] if dirs[0].is_dir() else dirs[0].parent)
    out = Path(out_dir)
    if len(dirs) == 1 and out.resolve() == dirs[0].resolve():
        return render_sweep_report(df, out)
    if (out / "cells").is_dir():
        raise UserError(f"{out} is a sweep directory (its sweep.csv is rebuilt from its cells): write the merged "
                        "report elsewhere")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "sweep.csv", frame_to_csv(df))
    return [out / "sweep.csv", *render_sweep_report(df, out)]
