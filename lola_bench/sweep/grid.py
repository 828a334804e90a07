"""Resumable eta/lambda/context grids: every grid cell is one ordinary ruler (or commonsense) run.

Layout of a sweep directory::

    config.json              the SweepSpec + provenance of the latest invocation (and its shard)
    sweep.csv                tidy results: one row per finished cell (x task x ctx), SWEEP_COLUMNS
    sweep.md, *.png          report (lola_bench.report.render_sweep_report)
    cells/<cell_id>/         one finished cell: summary.csv (its sweep.csv rows), predictions.jsonl (ruler),
                             results.json (runner extras: lm-eval results, chat template flag),
                             error.txt (traceback of a failed cell), done.json (status, wall time; written last)
    cells/.staging/          cells being written; renamed to cells/<cell_id> only when finished

``cell_id`` is sha256 of the canonical JSON of the cell's configuration (CellConfig.to_dict) cut to
16 hex digits. It holds everything that decides the result -- model spec, resolved device kind and dtype,
attention variant, a content fingerprint of the LoLA checkpoint and of the haystack/QA data, task, ctx,
samples, seed -- and no machine-local path, so shards on different machines agree on the ids. It holds
no git commit: after changing the engine, start a new sweep directory.

Resume: a cell is done when ``cells/<cell_id>/done.json`` exists. Cells are staged and renamed into place,
so a cell killed mid-way leaves nothing in ``cells/`` and is simply run again; ``sweep.csv`` is rebuilt
(atomically, under a lock) from the finished cells after each one. Failed cells (status "oom" or
"error") count as done; ``retry_failed=True`` runs them again.

Sharding: ``--shard k/n`` takes the cells whose index in the canonical grid order satisfies
``index % n == k - 1``. The canonical order does not depend on the order of the flags (every axis is
sorted), so machines given the same grid flags split it into disjoint shards whose union is the grid.
Changing the grid changes the split. Shards may write to their own directories (then merge with
``merge_sweeps`` / ``lola-bench report DIR...``) or to one shared directory (cells are renamed
atomically and sweep.csv is rebuilt under a file lock).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import socket
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd

from ..attention.config import FEATURE_MAPS, SCORERS, LolaConfig
from ..errors import UserError
from ..evals.ruler_bench import SUMMARY_COLUMNS
from ..records import MARKER, atomic_write_json, atomic_write_text, check_output_dir, to_jsonable
from ..settings import AttentionSettings, ModelSettings

SUITES = ("ruler", "commonsense")
CELL_FORMAT = 1                      # bump when the meaning of a cell config changes
SWEEP_COLUMNS = ["cell_id", "suite", "status", "error", *SUMMARY_COLUMNS, "acc_norm", "accuracy_stderr",
                 "num_fewshot", "wall_s"]
STATUSES = ("ok", "oom", "error")
Progress = Callable[[int, "str | None"], None]   # progress(advance, description), as for run_ruler


# ---- the grid -------------------------------------------------------------------------------------

def _ints(name: str, values, minimum: int) -> tuple[int, ...]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise UserError(f"--{name} values must be integers >= {minimum}, got {v!r}")
        out.append(v)
    return tuple(sorted(set(out)))


def _ordered(name: str, values, known) -> tuple:
    """Dedupe and sort by the position in ``known`` (so flag order never matters)."""
    known = list(known)
    for v in values:
        if v not in known:
            raise UserError(f"unknown {name} {v!r}: choose from {', '.join(str(k) for k in known if k)}")
    return tuple(sorted(set(values), key=known.index))


@dataclass(frozen=True)
class SweepSpec:
    """A grid of runs. Axes are deduplicated and sorted on construction (flag order is irrelevant).

    Ruler cells: one per attention variant x task x ctx (``samples`` prompts each). Commonsense cells: one
    per attention variant x task (``limit`` documents each); ``ctxs`` and ``samples`` are ignored there.
    Variants: ``full`` adds one full-attention reference cell per task (x ctx); every (feature map, scorer,
    window, lambda) adds a LoLA cell, where lambda = 0 is the "base" variant (window + linear state, no
    sparse cache; the scorer is irrelevant, so there is one per window x feature map); ``base`` adds
    lambda = 0 to the lambdas.
    """

    suite: str = "ruler"
    model: str = "smollm2-135m"
    device: str = "auto"
    dtype: str = "auto"
    lola_ckpt: str | None = None
    lambdas: tuple[int, ...] = (0, 64, 512)
    windows: tuple[int, ...] = (64,)
    ctxs: tuple[int, ...] = (4096,)
    tasks: tuple[str, ...] = ()                      # empty: niah_single_1 (ruler) / the five zero-shot suites
    scorers: tuple[str, ...] = ("sre",)
    feature_maps: tuple[str | None, ...] = (None,)   # None: the checkpoint's map (hedgehog), else hedgehog-identity
    full: bool = True
    base: bool = False
    samples: int = 100
    seed: int = 0
    combine: str | None = None                       # None: the checkpoint's formula, else gated
    sinks: int | None = None                         # None: the checkpoint's attention sinks, else 0
    gqa: str = "grouped"
    chunk: int | None = None
    essay_path: str | None = None
    qa_path: str | None = None
    chat_template: bool | None = None
    limit: int | None = None
    num_fewshot: int | None = None
    data_dir: str | None = None                      # commonsense data mirror (default: ../shared/data if present)
    online: bool = False                             # commonsense: lm-eval's official (hub) tasks even with a mirror
    batch_size: int = 1

    def __post_init__(self):
        if self.suite not in SUITES:
            raise UserError(f"unknown --suite {self.suite!r}: choose ruler or commonsense")
        lambdas = set(_ints("lambda", self.lambdas, 0)) | ({0} if self.base else set())
        normal = {"lambdas": tuple(sorted(lambdas)), "windows": _ints("window", self.windows, 1),
                  "ctxs": _ints("ctx", self.ctxs, 1), "scorers": _ordered("scorer", self.scorers, SCORERS),
                  "feature_maps": _ordered("feature map", self.feature_maps, (None, *FEATURE_MAPS)),
                  "tasks": self._expand_tasks(self.tasks)}
        for name, value in normal.items():
            object.__setattr__(self, name, value)       # frozen dataclass: normalise in place
        if self.lambdas and not self.windows:
            raise UserError("--window needs at least one value")
        if self.lambdas and not (self.scorers and self.feature_maps):
            raise UserError("--scorer and --feature-map need at least one value each")
        if self.suite == "ruler" and not self.ctxs:
            raise UserError("--ctx needs at least one value")
        if not self.lambdas and not self.full:
            raise UserError("empty grid: give --lambda values (or --base) or keep the full-attention reference")
        for name, minimum in (("samples", 1), ("batch_size", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise UserError(f"--{name.replace('_', '-')} must be an integer >= {minimum}, got {v!r}")
        for name, minimum in (("limit", 1), ("num_fewshot", 0)):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < minimum):
                raise UserError(f"--{name.replace('_', '-')} must be an integer >= {minimum}, got {v!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UserError(f"unknown --device {self.device!r}: choose auto, cpu or cuda")

    def _expand_tasks(self, tasks) -> tuple[str, ...]:
        tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        if self.suite == "ruler":
            tasks = tasks or ["niah_single_1"]
            from ..evals.ruler import TASKS
            from ..evals.ruler_bench import expand_tasks

            return _ordered("task", expand_tasks(tasks), TASKS)
        from ..evals.commonsense import DEFAULT_TASKS, KNOWN_TASKS

        names = list(DEFAULT_TASKS) if not tasks or "all" in tasks else [str(t).strip().lower() for t in tasks]
        return _ordered("commonsense task", names, KNOWN_TASKS)

    def to_dict(self) -> dict:
        return to_jsonable(asdict(self))


@dataclass(frozen=True)
class CellConfig:
    """Everything that decides one cell's result; its canonical JSON is hashed into the cell id."""

    suite: str
    model: str
    device: str                      # resolved kind: cpu | cuda
    dtype: str                       # resolved: float32 | bfloat16 | ...
    attention: AttentionSettings
    checkpoint: str | None           # content fingerprint of the LoLA checkpoint (None: no checkpoint)
    task: str
    ctx: int | None = None           # ruler only
    samples: int | None = None       # ruler only
    seed: int | None = None
    chat_template: bool | None = None
    haystack: str | None = None      # fingerprint of the essay / QA data the task reads (None: synthetic)
    limit: int | None = None         # commonsense only
    num_fewshot: int | None = None
    data: str | None = None          # commonsense: "local" (offline data dir) or "online"

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        att = self.attention.to_dict()
        if att.get("lola") and not att["lola"].get("sinks"):
            att["lola"].pop("sinks", None)  # cells hashed before sinks existed keep their ids
        return {"format": CELL_FORMAT, **d, "attention": att}

    @property
    def cell_id(self) -> str:
        return cell_hash(self.to_dict())


def cell_hash(config: dict) -> str:
    """sha256 of canonical JSON (sorted keys, no whitespace), first 16 hex digits."""
    text = json.dumps(to_jsonable(config), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Cell:
    """One grid cell: its hashed config plus where to find its inputs on this machine (not hashed)."""

    index: int                       # position in the canonical grid order (sharding uses it)
    config: CellConfig
    ckpt_path: str | None = None
    essay_path: str | None = None
    qa_path: str | None = None
    data_dir: str | None = None      # commonsense: the offline data mirror (None: lm-eval's online tasks)
    batch_size: int = 1

    @property
    def cell_id(self) -> str:
        return self.config.cell_id

    @property
    def label(self) -> str:
        c, a = self.config, self.config.attention
        variant = "full" if a.mode == "full" else (
            f"{a.mode} eta={a.lola.window} lambda={a.lola.sparse}"
            + (f" {a.lola.scorer}" if a.mode == "lola" else "") + f" {a.lola.feature_map}"
            + (f" sinks={a.lola.sinks}" if a.lola.sinks else ""))
        return f"{variant} | {c.task}" + (f" ctx={c.ctx}" if c.ctx is not None else "")

    def describe(self) -> dict:
        """Flat description for tables (dry run)."""
        c, a = self.config, self.config.attention
        lola = a.lola
        return {"index": self.index, "cell_id": self.cell_id, "suite": c.suite, "attn": a.mode,
                "window": lola.window if lola else None, "lambda": lola.sparse if lola else None,
                "sinks": lola.sinks if lola else None,
                "scorer": lola.scorer if a.mode == "lola" else None,
                "feature_map": lola.feature_map if lola else None, "task": c.task, "ctx": c.ctx,
                "n": c.samples if c.suite == "ruler" else c.limit}


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


def _resolved_device(spec: SweepSpec) -> tuple[str, str]:
    """(device kind, dtype) as the model will load: 'auto' resolves here, an explicit device is kept as is."""
    device = spec.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.dtype == "auto":
        return device, "bfloat16" if device == "cuda" else "float32"
    if spec.dtype not in ("float32", "bfloat16", "float16", "float64"):
        raise UserError(f"unknown --dtype {spec.dtype!r}: choose auto, float32, bfloat16 or float16")
    return device, spec.dtype


def _essay_path(spec: SweepSpec) -> str | None:
    """--essay-path, else $LOLA_BENCH_ESSAY, else the staged RULER essays in the data directory."""
    from ..evals.ruler.haystack import resolve_essay_path
    from ..paths import data_dir

    p = resolve_essay_path(spec.essay_path)
    if p is not None:
        return str(p)
    d = data_dir()
    default = d / "ruler_essay" / "PaulGrahamEssays.json" if d else None
    return str(default) if default is not None and default.is_file() else None


def _ruler_settings(spec: SweepSpec):
    from ..evals.ruler_bench import RulerSettings

    return RulerSettings(tasks=spec.tasks, ctxs=spec.ctxs, samples=spec.samples,
                         seed=spec.seed, essay_path=_essay_path(spec), qa_path=spec.qa_path,
                         chat_template=spec.chat_template)


def _variants(spec: SweepSpec) -> list[tuple[AttentionSettings, str | None]]:
    """Attention variants in canonical order, each with its resolved checkpoint path."""
    from ..models.checkpoint import read_meta, resolve_checkpoint

    out: list[tuple[AttentionSettings, str | None]] = []
    if spec.full:
        out.append((AttentionSettings("full"), None))
    if not spec.lambdas:
        return out
    ms = ModelSettings(spec.model, spec.device, spec.dtype, spec.lola_ckpt)
    resolved = list(dict.fromkeys(resolve_checkpoint(ms, fm) for fm in spec.feature_maps))
    for ckpt, fmap in resolved:
        meta = read_meta(ckpt) if ckpt else {}
        combine = spec.combine or meta.get("combine") or "gated"
        sinks = spec.sinks if spec.sinks is not None else int(meta.get("sinks") or 0)
        for window in spec.windows:
            base = LolaConfig(window=window, sparse=0, chunk=spec.chunk, feature_map=fmap, combine=combine,
                              gqa=spec.gqa, seed=spec.seed, sinks=sinks)
            if 0 in spec.lambdas:          # scorer-independent: one base cell, canonical (default) scorer
                out.append((AttentionSettings("base", base), ckpt))
            for scorer in spec.scorers:
                for lam in spec.lambdas:
                    if lam:
                        out.append((AttentionSettings("lola", replace(base, sparse=lam, scorer=scorer)), ckpt))
    return out


def _commonsense_data_dir(spec: SweepSpec) -> str | None:
    """The offline mirror the commonsense cells read (None: lm-eval's online tasks), as the commonsense command."""
    from ..paths import data_dir

    d = None if spec.online else data_dir(spec.data_dir)
    return str(d) if d else None


def validate_spec(spec: SweepSpec) -> None:
    """Every check possible before loading a model (UserError). The ctx limit is checked after loading."""
    _resolved_device(spec)
    if spec.suite == "ruler":
        from ..evals.ruler_bench import validate

        validate(_ruler_settings(spec), 0)
    else:
        from ..evals.commonsense import resolve_tasks

        data = _commonsense_data_dir(spec)
        if spec.data_dir and not spec.online and not Path(data).is_dir():
            raise UserError(f"--data-dir {spec.data_dir} does not exist")
        try:
            resolve_tasks(list(spec.tasks), data)
        except ValueError as e:
            raise UserError(str(e)) from None
    _variants(spec)


def cells(spec: SweepSpec) -> list[Cell]:
    """Expand the grid in canonical order: per task and ctx, full attention, then per feature map and window the
    base cell (lambda = 0) and the LoLA cells per scorer and lambda. Validates the spec first (UserError)."""
    validate_spec(spec)
    device, dtype = _resolved_device(spec)
    variants = [(attn, ckpt, fingerprint(ckpt, exclude=("lola.json",)) if ckpt else None)
                for attn, ckpt in _variants(spec)]
    out: list[Cell] = []
    if spec.suite == "ruler":
        from ..evals.ruler import TASKS
        from ..evals.ruler.haystack import resolve_qa_path

        essay = _essay_path(spec)
        for task in spec.tasks:
            t = TASKS[task]
            data_path = essay if t.needs_essay else (resolve_qa_path(t.qa_dataset, spec.qa_path)[0]
                                                     if t.kind == "qa" else None)
            haystack = fingerprint(data_path) if data_path else None
            for ctx in spec.ctxs:
                for attn, ckpt, ck_id in variants:
                    cfg = CellConfig("ruler", spec.model, device, dtype, attn, ck_id, task, ctx=ctx,
                                     samples=spec.samples, seed=spec.seed, chat_template=spec.chat_template,
                                     haystack=haystack)
                    out.append(Cell(len(out), cfg, ckpt, essay_path=essay if t.needs_essay else None,
                                    qa_path=spec.qa_path if t.kind == "qa" else None))
    else:
        data_dir = _commonsense_data_dir(spec)
        for task in spec.tasks:
            for attn, ckpt, ck_id in variants:
                cfg = CellConfig("commonsense", spec.model, device, dtype, attn, ck_id, task, limit=spec.limit,
                                 num_fewshot=spec.num_fewshot, data="local" if data_dir else "online")
                out.append(Cell(len(out), cfg, ckpt, data_dir=data_dir, batch_size=spec.batch_size))
    return out


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'k/n' (1 <= k <= n) -> (k, n); None -> None."""
    if text is None or text == "":
        return None
    try:
        k, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise UserError(f"--shard must look like k/n (e.g. 2/4), got {text!r}") from None
    if not 1 <= k <= n:
        raise UserError(f"--shard {text}: need 1 <= k <= n")
    return k, n


def as_shard(shard: tuple[int, int] | str | None) -> tuple[int, int] | None:
    """A shard given as 'k/n' or (k, n), checked."""
    if shard is None or isinstance(shard, str):
        return parse_shard(shard)
    return parse_shard(f"{shard[0]}/{shard[1]}")


def shard_cells(all_cells: list[Cell], shard: tuple[int, int] | str | None) -> list[Cell]:
    """The cells of shard k of n: grid index % n == k - 1."""
    shard = as_shard(shard)
    if shard is None:
        return list(all_cells)
    k, n = shard
    return [c for c in all_cells if c.index % n == k - 1]


def default_sweep_dir(spec: SweepSpec, grid: list[Cell] | None = None) -> Path:
    """results/sweep/<model>-<suite>-<hash of the grid's cell ids>: the same grid maps to the same directory, so
    rerunning a command resumes it (and shards of one grid meet in one directory)."""
    import re

    from ..paths import results_dir

    ids = sorted(c.cell_id for c in (grid if grid is not None else cells(spec)))
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.model).strip("_")
    return results_dir() / "sweep" / f"{safe}-{spec.suite}-{cell_hash({'cells': ids})[:8]}"


# ---- the sweep directory --------------------------------------------------------------------------

@dataclass
class CellOutput:
    """What run_cell returns: summary rows (any SWEEP_COLUMNS), per-sample predictions, raw results."""

    rows: pd.DataFrame
    predictions: list[dict] = field(default_factory=list)
    raw: dict | None = None


class SweepDir:
    """The on-disk state of one sweep: finished cells, staging, sweep.csv."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.cells_dir = self.path / "cells"
        self.staging = self.cells_dir / ".staging"
        self.csv = self.path / "sweep.csv"

    def check(self) -> None:
        """Refuse a directory that is not (or cannot become) a sweep directory, before any work starts."""
        if self.path.is_dir() and any(self.path.iterdir()):
            check_output_dir(self.path, overwrite=True, what="sweep directory")   # resuming is not replacing
        else:
            check_output_dir(self.path, what="sweep directory")

    def prepare(self) -> None:
        self.check()
        self.staging.mkdir(parents=True, exist_ok=True)
        (self.path / MARKER).touch()
        self._clean_stale_staging()

    def _clean_stale_staging(self) -> None:
        """Remove staged cells left by dead processes of this host (others may belong to live shards)."""
        host = socket.gethostname()
        for d in self.staging.iterdir() if self.staging.is_dir() else []:
            parts = d.name.split(".")
            if len(parts) >= 4 and parts[1] == host and parts[2].isdigit() and not _pid_alive(int(parts[2])):
                shutil.rmtree(d, ignore_errors=True)

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
            atomic_write_text(stage / "summary.csv", rows.to_csv(index=False))
            if predictions:
                with open(stage / "predictions.jsonl", "w", encoding="utf-8") as f:
                    f.writelines(json.dumps(to_jsonable(p)) + "\n" for p in predictions)
            if raw is not None:
                atomic_write_json(stage / "results.json", raw)
            if error_text:
                atomic_write_text(stage / "error.txt", error_text)
            atomic_write_json(stage / "done.json", info)
            target = self.cells_dir / cell.cell_id
            if target.exists():                      # a failed cell being retried, or a broken directory
                trash = self.staging / f"{cell.cell_id}.old.{os.getpid()}.{time.time_ns()}"
                os.replace(target, trash)
                shutil.rmtree(trash, ignore_errors=True)
            try:
                os.replace(stage, target)
            except OSError:                          # another process finished the same cell first
                if self.done(cell.cell_id) is None:
                    raise
                shutil.rmtree(stage, ignore_errors=True)
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
            atomic_write_text(self.csv, df.to_csv(index=False))
        return df


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


# ---- running --------------------------------------------------------------------------------------

def default_load_model(spec: SweepSpec):
    from ..models.loading import load_model

    return load_model(spec.model, spec.device, spec.dtype)


def _device_label(loaded) -> str:
    from ..provenance import device_label

    return device_label(getattr(loaded, "device", "cpu"))


def default_run_cell(loaded, cell: Cell, progress: Progress | None = None) -> CellOutput:
    """Run one cell with the ordinary runners: run_ruler (one variant) or run_commonsense (one task)."""
    from ..models.variants import apply_attention

    c = cell.config
    if c.suite == "ruler":
        from ..evals.ruler_bench import RulerSettings, run_ruler

        rs = RulerSettings(tasks=(c.task,), ctxs=(c.ctx,), samples=c.samples, seed=c.seed,
                           essay_path=cell.essay_path, qa_path=cell.qa_path, chat_template=c.chat_template)
        out = run_ruler(loaded, [c.attention], rs, ckpt=cell.ckpt_path, device_label=_device_label(loaded),
                        progress=progress)
        return CellOutput(out.summary, out.predictions, {"chat_template_applied": out.chat_template})

    from ..evals.commonsense import run_commonsense

    apply_attention(loaded.model, c.attention, cell.ckpt_path)
    try:
        summary, raw = run_commonsense(loaded.model, loaded.tokenizer, [c.task], data_dir=cell.data_dir,
                                       limit=c.limit, num_fewshot=c.num_fewshot, batch_size=cell.batch_size,
                                       device=loaded.device)
    finally:
        apply_attention(loaded.model, AttentionSettings("full"))
    by_metric = {r.metric: r for r in summary.itertuples(index=False)}
    acc, norm = by_metric.get("acc"), by_metric.get("acc_norm")
    row = {**_variant_columns(cell), "model": loaded.spec, "task": c.task, "ctx": None,
           "n": acc.n if acc else None, "accuracy": 100 * acc.value if acc else None,
           "acc_norm": 100 * norm.value if norm else None, "accuracy_stderr": 100 * acc.stderr if acc else None,
           "num_fewshot": acc.num_fewshot if acc else c.num_fewshot, "device": _device_label(loaded)}
    return CellOutput(pd.DataFrame([row]), [], raw)


def _variant_columns(cell: Cell) -> dict:
    d = cell.describe()
    return {k: d[k] for k in ("attn", "window", "lambda", "sinks", "scorer", "feature_map")}


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
    import gc

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
    report: list[Path] = field(default_factory=list)  # files written by the report


def run_sweep(spec: SweepSpec, out_dir: str | os.PathLike, *, shard: tuple[int, int] | str | None = None,
              retry_failed: bool = False, load_model: Callable | None = None, run_cell: Callable | None = None,
              progress: Progress | None = None, report: bool = True) -> SweepResult:
    """Run the pending cells of ``spec`` (of one shard) into ``out_dir``; finished cells are skipped.

    ``load_model(spec) -> loaded`` is called once, lazily, before the first pending cell (never when every
    cell is done). ``run_cell(loaded, cell, progress) -> CellOutput`` runs one cell. A cell that raises
    (anything but KeyboardInterrupt/SystemExit) is recorded with status "oom" or "error" and the sweep goes
    on. ``progress(advance, description)``: one unit per pending cell. ``report``: re-render sweep.md and the
    plots when anything ran (or they are missing).
    """
    load_model = load_model or default_load_model
    run_cell = run_cell or default_run_cell
    grid = cells(spec)
    mine = shard_cells(grid, shard)
    order = {c.cell_id: c.index for c in grid}
    sweep = SweepDir(out_dir)
    sweep.prepare()
    pending = [c for c in mine if _pending(sweep.done(c.cell_id), retry_failed)]
    if pending or not (sweep.path / "config.json").exists():
        from ..provenance import provenance

        shard = as_shard(shard)
        atomic_write_json(sweep.path / "config.json", {
            "command": "sweep", "sweep": spec.to_dict(), "shard": f"{shard[0]}/{shard[1]}" if shard else None,
            "cells": len(grid), "cells_in_shard": len(mine), "provenance": provenance(_resolved_device(spec)[0])})
    result = SweepResult(sweep.path, pd.DataFrame(columns=SWEEP_COLUMNS), skipped=len(mine) - len(pending))
    loaded = None
    for i, cell in enumerate(pending, 1):
        if not _pending(sweep.done(cell.cell_id), retry_failed):
            if progress:                               # finished meanwhile by a process sharing the dir
                progress(1, None)
            continue
        if loaded is None:
            loaded = load_model(spec)
            _check_context(spec, loaded)
        prefix = f"[{i}/{len(pending)}] {cell.label}"
        if progress:
            progress(0, prefix)

        def sub(advance, desc, prefix=prefix):     # the runner's per-sample steps: description only
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
        sweep.commit(cell, rows, info, predictions=out.predictions if out else None,
                     raw=out.raw if out else None, error_text=error_text)
        result.frame = sweep.rebuild_csv(order)
        result.ran.append(cell.cell_id)
        if status != "ok":
            result.failed.append(cell.cell_id)
        if progress:
            progress(1, f"{prefix}: {status}" if status != "ok" else None)
    if not result.ran:
        result.frame = read_sweep_csv(sweep.csv) if sweep.csv.exists() else sweep.rebuild_csv(order)
    if report and not result.frame.empty and (result.ran or not (sweep.path / "sweep.md").exists()):
        from ..report import render_sweep_report

        result.report = render_sweep_report(result.frame, sweep.path)
    return result


def _cell_rows(cell: Cell, out: CellOutput | None, status: str, error: str | None, wall: float,
               loaded) -> pd.DataFrame:
    """The cell's rows in SWEEP_COLUMNS: the runner's summary, or one row describing the failed cell."""
    c = cell.config
    if out is not None and not out.rows.empty:
        df = out.rows.copy()
    else:
        df = pd.DataFrame([{**_variant_columns(cell), "model": c.model, "task": c.task, "ctx": c.ctx,
                            "device": _device_label(loaded) if loaded is not None else None}])
        if status == "ok":
            status, error = "error", "the cell produced no rows"
    df["cell_id"], df["suite"], df["status"], df["error"] = cell.cell_id, c.suite, status, error
    df["wall_s"] = round(wall, 3)
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


_STATUS_RANK = {"ok": 0, "oom": 1, "error": 2}


def read_sweep_csv(path: str | os.PathLike) -> pd.DataFrame:
    try:
        return tidy(pd.read_csv(path))
    except pd.errors.EmptyDataError:
        return tidy(pd.DataFrame())


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
