"""Resumable eta/lambda/context grids: every grid cell is one ordinary ruler (or commonsense) run.

Modules (each imports only the ones above it; none imports lola_bench.report):
  grid   SweepSpec, CellConfig, Cell: the grid in canonical order, cell ids (hash), validation
  shard  parse_shard, as_shard, shard_cells: --shard k/n over the canonical order
  store  SweepDir and sweep.csv: SWEEP_COLUMNS, tidy, read_sweep_csv, merge_sweeps
  run    run_sweep (the pending cells of a grid into a SweepDir), default_run_cell, plan_sweep (dry run, ETA)
  launch launch_sweep: the pending cells as one submitit array job (--launcher slurm|local), job records
         (imported on demand: ``from lola_bench.sweep.launch import ...``)
"""

from .grid import (
    Cell,
    CellConfig,
    SweepSpec,
    cell_hash,
    cells,
    default_sweep_dir,
    fingerprint,
    validate_spec,
)
from .run import (
    CellOutput,
    SweepResult,
    default_load_model,
    default_run_cell,
    format_eta,
    plan_sweep,
    run_sweep,
)
from .shard import as_shard, parse_shard, shard_cells
from .store import SWEEP_COLUMNS, SweepDir, merge_sweeps, read_sweep_csv, tidy

__all__ = [
    "SWEEP_COLUMNS", "Cell", "CellConfig", "CellOutput", "SweepDir", "SweepResult", "SweepSpec", "as_shard",
    "cell_hash", "cells", "default_load_model", "default_run_cell", "default_sweep_dir", "fingerprint",
    "format_eta", "merge_sweeps", "parse_shard", "plan_sweep", "read_sweep_csv", "run_sweep", "shard_cells",
    "tidy", "validate_spec",
]
