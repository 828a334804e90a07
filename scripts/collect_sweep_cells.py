#!/usr/bin/env python
"""Collect the finished cells of sweep directories into one (shards run elsewhere, resumable background workers in
other checkouts), then rebuild its sweep.csv and report.

    python scripts/collect_sweep_cells.py SRC [SRC ...] --into results/sweep/NAME [--no-report]

A cell is copied when its ``done.json`` exists and ``--into`` has no cell of that id (cell ids hash the cell's whole
configuration, so equal ids are equal cells); unfinished and failed-in-progress cells are left where they are. The
first SRC's config.json and run marker are copied when ``--into`` has none. sweep.csv is rebuilt from every
finished cell (``SweepDir.rebuild_csv``), keeping the row order of the existing sweep.csv, new cells after it (by
id); then ``lola-bench report`` rewrites sweep.md and the plots unless ``--no-report``. Copies are staged outside
``cells/`` and renamed into it, so an interrupted run leaves no half-copied cell there.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lola_bench.errors import UserError  # noqa: E402
from lola_bench.records import MARKER  # noqa: E402
from lola_bench.sweep.store import SweepDir  # noqa: E402


def collect(sources: list[Path], into: Path) -> list[str]:
    """Copy the finished cells of ``sources`` missing from ``into``; their ids."""
    cells, staging = into / "cells", into / f".collect.tmp{os.getpid()}"
    cells.mkdir(parents=True, exist_ok=True)
    new = []
    for src in sources:
        if not (src / "cells").is_dir():
            raise UserError(f"{src} is not a sweep directory (no cells/)")
        for cell in sorted((src / "cells").iterdir()):
            if not (cell / "done.json").is_file() or (cells / cell.name).exists():
                continue
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(cell, staging)
            staging.rename(cells / cell.name)
            new.append(cell.name)
    first = sources[0]
    for name in ("config.json", MARKER):
        if (first / name).is_file() and not (into / name).exists():
            shutil.copy2(first / name, into / name)
    return new


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sources", nargs="+", type=Path, help="sweep directories to collect from")
    ap.add_argument("--into", type=Path, required=True, help="the sweep directory that receives the cells")
    ap.add_argument("--no-report", action="store_true", help="rebuild sweep.csv only (no lola-bench report)")
    args = ap.parse_args(argv)
    try:
        new = collect(args.sources, args.into)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import pandas as pd

    old = args.into / "sweep.csv"
    order = ({c: i for i, c in enumerate(dict.fromkeys(pd.read_csv(old)["cell_id"]))}
             if old.is_file() and old.stat().st_size else None)
    df = SweepDir(args.into).rebuild_csv(order)
    print(f"{args.into}: {len(new)} new cells, {df['cell_id'].nunique() if len(df) else 0} in sweep.csv")
    if not args.no_report:
        subprocess.run([sys.executable, "-m", "lola_bench", "report", str(args.into)], check=True,
                       stdout=subprocess.DEVNULL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
