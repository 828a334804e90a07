"""The sweep grid: what to run (SweepSpec), each cell's hashed configuration (CellConfig, Cell), the canonical
order and the default sweep directory (sharding: ``shard.py``).

``cell_id`` is sha256 of the canonical JSON of the cell's configuration (CellConfig.to_dict) cut to
16 hex digits. It holds everything that decides the result -- model spec, resolved device kind and dtype,
attention variant, a content fingerprint of the LoLA checkpoint and of the haystack/QA data, task, ctx,
samples, seed -- and no machine-local path, so shards on different machines agree on the ids. It holds
no git commit: after changing the engine, start a new sweep directory.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ..attention.config import EVICT_AT, FEATURE_MAPS, SCORERS, STATE_SCORERS
from ..errors import UserError
from ..paths import data_dir, results_dir
from ..records import cell_hash, fingerprint, to_jsonable
from ..settings import (
    AttentionSettings,
    check_kernels,
    check_preset,
    resolved_kernels,
)
from .budget import parse_budgets
from .variants import grid_variants

SUITES = ("ruler", "commonsense")
CELL_FORMAT = 1                      # bump when the meaning of a cell config changes


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
    lambda = 0 to the lambdas. ``evict`` adds KV-eviction cells (``--attn evict``) at the same windows and lambdas,
    one per scorer of ``evict_scorers`` (default: the scorers other than sre; lambda = 0: one per window, scorer
    sink: the sinks + window of StreamingLLM),
    with no checkpoint; the other settings (sinks, GQA, cadence) as the LoLA cells resolve them. ``evict_at`` is an
    axis of the eviction cells: boundary (choose at every chunk boundary) and / or prompt_end (full-attention
    prefill, then one compression; ``LolaConfig.evict_at``). Boundary cells keep the ids they had before the axis.

    ``budgets_mib`` (ruler only; equal-memory comparison): the nonzero lambdas are replaced, per ctx, by the largest
    lambda whose analytic cache bytes at that ctx fit each budget (sweep/budget.py), for every LoLA (feature map,
    window, scorer) and eviction (window, scorer) family; the base cell (lambda = 0 in ``lambdas``) and full
    attention stay at their own cost. The budget is recorded in the cell (``budget_mib``) but not hashed.
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
    evict: bool = False                              # add eviction cells (LoLA's window + cache, the rest dropped)
    evict_scorers: tuple[str, ...] = ()              # eviction cells' scorers (empty: --scorer's, sre excepted)
    evict_at: tuple[str, ...] = ("boundary",)        # when eviction cells choose: boundary and / or prompt_end
    samples: int = 100
    seed: int = 0
    combine: str | None = None                       # None: the preset's, the checkpoint's, else lola
    sinks: int | None = None                         # None: the preset's, the checkpoint's, else 0
    gqa: str | None = None                           # None: the preset's, the checkpoint's, else expanded
    chunk: int | None = None
    preset: str | None = None                        # settings.PRESETS (e.g. paper)
    kernels: str = "auto"                            # auto | torch | triton (the implementation asked for)
    essay_path: str | None = None
    qa_path: str | None = None
    chat_template: bool | None = None
    limit: int | None = None
    num_fewshot: int | None = None
    data_dir: str | None = None                      # commonsense data mirror (default: ../shared/data if present)
    online: bool = False                             # commonsense: lm-eval's official (hub) tasks even with a mirror
    batch_size: int = 1
    budgets_mib: tuple[float, ...] = ()              # equal-memory: lambda per variant and ctx fitted to each budget
    diagnostics: bool = True                         # ruler: needle diagnostics columns (not hashed: no effect on
                                                     # accuracy)
    decode_mode: str = "auto"                        # ruler: auto | graphed | eager (evals/graphed_generate.py)
    prefill_logits: str = "last"                     # ruler: the prefill's output head on the last position / all

    def __post_init__(self):
        if self.suite not in SUITES:
            raise UserError(f"unknown --suite {self.suite!r}: choose ruler or commonsense")
        lambdas = set(_ints("lambda", self.lambdas, 0)) | ({0} if self.base else set())
        normal = {"lambdas": tuple(sorted(lambdas)), "windows": _ints("window", self.windows, 1),
                  "ctxs": _ints("ctx", self.ctxs, 1), "scorers": _ordered("scorer", self.scorers, SCORERS),
                  "feature_maps": _ordered("feature map", self.feature_maps, (None, *FEATURE_MAPS)),
                  "tasks": self._expand_tasks(self.tasks), "budgets_mib": parse_budgets(self.budgets_mib),
                  "evict_at": _ordered("--evict-at value", self.evict_at, EVICT_AT)}
        for name, value in normal.items():
            object.__setattr__(self, name, value)       # frozen dataclass: normalise in place
        if self.budgets_mib and self.suite != "ruler":
            raise UserError("--budget-mib needs the ruler suite (the budget is met at each --ctx)")
        if self.budgets_mib and not self.windows:
            raise UserError("--window needs at least one value")
        if self.lambdas and not self.windows:
            raise UserError("--window needs at least one value")
        if self.lambdas and not (self.scorers and self.feature_maps):
            raise UserError("--scorer and --feature-map need at least one value each")
        if self.suite == "ruler" and not self.ctxs:
            raise UserError("--ctx needs at least one value")
        bad = [s for s in self.evict_scorers if s in STATE_SCORERS]
        if bad:
            raise UserError(f"--evict-scorer {bad[0]}: eviction has no linear state to score against (choose sink, "
                            "attention, snapkv, key_norm, random or recency)")
        if self.evict_scorers and not self.evict:
            object.__setattr__(self, "evict", True)    # --evict-scorer implies --evict
        if self.evict and not self.eviction_scorers():
            raise UserError("eviction cells need a scorer other than sre (e.g. --scorer sink,attention,snapkv)")
        if not self.evict_at:
            raise UserError("--evict-at needs at least one value (boundary, prompt_end)")
        if self.evict_at != ("boundary",) and not self.evict:
            raise UserError("--evict-at prompt_end applies to eviction cells: add --evict or --evict-scorer")
        if "prompt_end" in self.evict_at and self.suite != "ruler":
            raise UserError("--evict-at prompt_end compresses the cache after a prompt: the commonsense suite scores "
                            "every token in one forward call, so it would be full attention (use boundary)")
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
        check_preset(self.preset)
        check_kernels(self.kernels)
        from ..evals.timing import DECODE_MODES

        if self.decode_mode not in DECODE_MODES:
            raise UserError(f"unknown --decode-mode {self.decode_mode!r}: choose {', '.join(DECODE_MODES)}")
        if self.prefill_logits not in ("last", "all"):
            raise UserError(f"unknown --prefill-logits {self.prefill_logits!r}: choose last or all")
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

    def eviction_scorers(self) -> tuple[str, ...]:
        """The scorers of the eviction cells: ``evict_scorers``, else ``scorers`` without sre."""
        return self.evict_scorers or tuple(s for s in self.scorers if s not in STATE_SCORERS)

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
    decode: str | None = None        # ruler: "graphed" (static cache, captured step on CUDA); None: eager
    prefill_logits: str | None = None  # ruler: "last" (the head on the last prompt position); None: on every one

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        if d["decode"] is None:
            d.pop("decode")                 # eager cells keep the ids they had before the decode mode was hashed
        if d["prefill_logits"] is None:
            d.pop("prefill_logits")         # ... and cells that applied the head to every prompt position theirs
        att = self.attention.to_dict()
        att.pop("origin", None)             # where a setting came from does not change the result
        impl = resolved_kernels(att.pop("kernels", "auto"), self.device)
        if impl != "torch" and self.attention.mode != "full":
            att["kernels"] = impl           # torch-path cells keep the ids they had before kernels were hashed
        if att.get("lola") and not att["lola"].get("sinks"):
            att["lola"].pop("sinks", None)  # cells hashed before sinks existed keep their ids
        if att.get("lola") and att["lola"].get("fold", True):
            att["lola"].pop("fold", None)   # ... and before eviction existed
        return {"format": CELL_FORMAT, **d, "attention": att}

    @property
    def cell_id(self) -> str:
        return cell_hash(self.to_dict())


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
    budgets_mib: tuple[float, ...] = ()  # equal-memory budgets this cell's lambda was chosen for (not hashed)
    diagnostics: bool = True             # ruler: needle diagnostics columns (not hashed)

    @property
    def cell_id(self) -> str:
        return self.config.cell_id

    @property
    def budget_mib(self) -> float | None:
        """The smallest budget the cell was chosen for (several budgets can pick the same lambda)."""
        return min(self.budgets_mib) if self.budgets_mib else None

    @property
    def label(self) -> str:
        c, a = self.config, self.config.attention
        variant = "full" if a.mode == "full" else (
            f"{a.mode} eta={a.lola.window} lambda={a.lola.sparse}"
            + (f" {a.lola.scorer}" if a.mode in ("lola", "evict") else "")
            + (f" {a.lola.feature_map}" if a.lola.fold else "")
            + (f" at={a.lola.evict_at}" if a.mode == "evict" and a.lola.evict_at != "boundary" else "")
            + (f" sinks={a.lola.sinks}" if a.lola.sinks else ""))
        budget = f" budget={','.join(f'{b:g}' for b in self.budgets_mib)}MiB" if self.budgets_mib else ""
        return f"{variant}{budget} | {c.task}" + (f" ctx={c.ctx}" if c.ctx is not None else "")

    def describe(self) -> dict:
        """Flat description for tables (dry run)."""
        c, a = self.config, self.config.attention
        lola = a.lola
        return {"index": self.index, "cell_id": self.cell_id, "suite": c.suite, "attn": a.mode,
                "window": lola.window if lola else None, "lambda": lola.sparse if lola else None,
                "sinks": lola.sinks if lola else None,
                "scorer": lola.scorer if a.mode in ("lola", "evict") else None,
                "feature_map": lola.feature_map if lola and lola.fold else None,
                "evict_at": lola.evict_at if a.mode == "evict" else None, "task": c.task, "ctx": c.ctx,
                "n": c.samples if c.suite == "ruler" else c.limit, "budget_mib": self.budget_mib}


def _resolved_device(spec: SweepSpec) -> tuple[str, str]:
    """(device kind, dtype) as the model will load: 'auto' resolves here, an explicit device is kept as is."""
    device = spec.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = "cuda" if device.startswith("cuda:") else device      # cuda:N hashes as the device kind
    if spec.dtype == "auto":
        return device, "bfloat16" if device == "cuda" else "float32"
    if spec.dtype not in ("float32", "bfloat16", "float16", "float64"):
        raise UserError(f"unknown --dtype {spec.dtype!r}: choose auto, float32, bfloat16 or float16")
    return device, spec.dtype


def _essay_path(spec: SweepSpec) -> str | None:
    from ..evals.ruler.haystack import default_essay_path

    return default_essay_path(spec.essay_path)


def _ruler_settings(spec: SweepSpec):
    from ..evals.ruler_bench import RulerSettings

    return RulerSettings(tasks=spec.tasks, ctxs=spec.ctxs, samples=spec.samples,
                         seed=spec.seed, essay_path=_essay_path(spec), qa_path=spec.qa_path,
                         chat_template=spec.chat_template)


def _variants(spec: SweepSpec, ctx: int | None = None):
    """Attention variants in canonical order: (settings, checkpoint path, budgets); see sweep/variants.py."""
    return grid_variants(spec, ctx, _resolved_device(spec)[1])


def _commonsense_data_dir(spec: SweepSpec) -> str | None:
    """The offline mirror the commonsense cells read (None: lm-eval's online tasks), as the commonsense command."""
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
    if spec.budgets_mib:
        for ctx in spec.ctxs:
            if not _variants(spec, ctx):
                raise UserError(f"no variant fits --budget-mib {', '.join(f'{b:g}' for b in spec.budgets_mib)} at "
                                f"ctx {ctx}, and --no-full leaves nothing to run")
    else:
        _variants(spec)


def cells(spec: SweepSpec) -> list[Cell]:
    """Expand the grid in canonical order: per task and ctx, full attention, then per feature map and window the
    base cell (lambda = 0) and the LoLA cells per scorer and lambda (with budgets: the lambda fitted to each budget
    at that ctx), then the eviction cells. Validates the spec first (UserError)."""
    validate_spec(spec)
    device, dtype = _resolved_device(spec)
    from ..models.checkpoint import checkpoint_fingerprint

    fingerprints: dict = {}

    def variants(ctx=None):
        out = []
        for attn, ckpt, budgets in _variants(spec, ctx):
            if ckpt and ckpt not in fingerprints:
                fingerprints[ckpt] = checkpoint_fingerprint(ckpt, exclude=("lola.json",))
            out.append((attn, ckpt, fingerprints.get(ckpt), budgets))
        return out

    out: list[Cell] = []
    if spec.suite == "ruler":
        from ..evals.ruler import TASKS
        from ..evals.ruler.haystack import resolve_qa_path
        from ..evals.timing import graphed_decode_on

        essay = _essay_path(spec)
        decode = "graphed" if graphed_decode_on(spec.decode_mode, device) else None
        for task in spec.tasks:
            t = TASKS[task]
            data_path = essay if t.needs_essay else (resolve_qa_path(t.qa_dataset, spec.qa_path)[0]
                                                     if t.kind == "qa" else None)
            haystack = fingerprint(data_path) if data_path else None
            for ctx in spec.ctxs:
                for attn, ckpt, ck_id, budgets in variants(ctx):
                    cfg = CellConfig("ruler", spec.model, device, dtype, attn, ck_id, task, ctx=ctx,
                                     samples=spec.samples, seed=spec.seed, chat_template=spec.chat_template,
                                     haystack=haystack, decode=decode,
                                     prefill_logits="last" if spec.prefill_logits == "last" else None)
                    out.append(Cell(len(out), cfg, ckpt, essay_path=essay if t.needs_essay else None,
                                    qa_path=spec.qa_path if t.kind == "qa" else None, budgets_mib=budgets,
                                    diagnostics=spec.diagnostics))
    else:
        data_dir = _commonsense_data_dir(spec)
        for task in spec.tasks:
            for attn, ckpt, ck_id, _ in variants():
                cfg = CellConfig("commonsense", spec.model, device, dtype, attn, ck_id, task, limit=spec.limit,
                                 num_fewshot=spec.num_fewshot, data="local" if data_dir else "online")
                out.append(Cell(len(out), cfg, ckpt, data_dir=data_dir, batch_size=spec.batch_size))
    return out


def default_sweep_dir(spec: SweepSpec, grid: list[Cell] | None = None) -> Path:
    """results/sweep/<model>-<suite>-<hash of the grid's cell ids>: the same grid maps to the same directory, so
    rerunning a command resumes it (and shards of one grid meet in one directory)."""
    ids = sorted(c.cell_id for c in (grid if grid is not None else cells(spec)))
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", spec.model).strip("_")
    return results_dir() / "sweep" / f"{safe}-{spec.suite}-{cell_hash({'cells': ids})[:8]}"
