"""Zero-shot commonsense suites (and 5-shot MMLU) through lm-eval-harness.

``lola-bench commonsense`` hands an already-built transformers causal LM (possibly
with LoLA attention patched in) to lm-eval's ``HFLM`` and runs lm-eval's own
evaluator on: piqa, arc_easy, arc_challenge, hellaswag, winogrande, and on
request mmlu. Scoring, batching and metric code are lm-eval's; this module only
picks the task definitions, runs them one at a time (for progress reporting),
and flattens the results into a tidy table.

Online vs offline
-----------------
* No data directory (argument ``data_dir`` is None and ``$LOLA_BENCH_DATA`` is
  unset): lm-eval's official task names are used unchanged and lm-eval fetches
  the Hugging Face datasets itself.
* With a data directory: the local ``lola_<task>`` definitions in
  ``<repo>/tasks/commonsense/`` are used instead. They read the staged files
  (see ``/work/shared/data/SOURCES.md`` for provenance) through
  ``tasks/commonsense/utils.py`` and copy the official lm-eval 0.4.13 prompts,
  choices, targets and metrics. The data directory reaches the loaders as task
  metadata (``TaskManager(metadata={"data_dir": ...})``), so it works from any
  working directory, and ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` are forced on
  for the duration of the run. Results are reported under the canonical names
  (``piqa``, not ``lola_piqa``).

Caveats of the offline data
---------------------------
* hellaswag: the original ``hellaswag_val.jsonl`` is not available offline, so
  all 10042 validation items come from llama.cpp's preprocessed text form.
  Its context/ending preprocessing differs slightly from lm-eval's (the
  ActivityNet ``ctx_b`` capitalisation is restored by the loader, but WikiHow
  endings that lm-eval leaves with a leading space have none here), so scores
  are close to, but not identical with, official ``hellaswag`` numbers.
  Details in ``tasks/commonsense/lola_hellaswag.yaml``.
* Only evaluation splits are staged (plus MMLU's ``dev``), so with
  ``num_fewshot > 0`` the non-MMLU tasks draw their examples from the evaluation
  split itself (lm-eval skips the document being scored); upstream uses train.
* ``limit`` applies per lm-eval task; for mmlu that is per subject (57 of them).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any
from unittest import mock

import pandas as pd

DEFAULT_TASKS: tuple[str, ...] = ("piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande")
KNOWN_TASKS: tuple[str, ...] = DEFAULT_TASKS + ("mmlu",)
DEFAULT_NUM_FEWSHOT: dict[str, int] = {"mmlu": 5}
METRICS: tuple[str, ...] = ("acc", "acc_norm")

DATA_ENV_VAR = "LOLA_BENCH_DATA"
FEWSHOT_SEED = 1234  # lm-eval's default few-shot sampler seed (simple_evaluate's fewshot_random_seed)
LOCAL_TASKS_DIR = Path(__file__).resolve().parents[2] / "tasks" / "commonsense"
LOCAL_PREFIX = "lola_"

# Evaluation-split sizes of the official lm-eval tasks (the local copies match).
OFFICIAL_DOC_COUNTS: dict[str, int] = {
    "piqa": 1838,
    "arc_easy": 2376,
    "arc_challenge": 1172,
    "hellaswag": 10042,
    "winogrande": 1267,
    "mmlu": 14042,
}

MMLU_SUBJECTS: tuple[str, ...] = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics",
    "econometrics", "electrical_engineering", "elementary_mathematics", "formal_logic",
    "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics",
    "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history",
    "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations",
    "security_studies", "sociology", "us_foreign_policy", "virology", "world_religions",
)  # fmt: skip

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]
TaskDoneFn = Callable[[str, dict], None]


# ---------------------------------------------------------------- task resolution


def local_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The data directory in effect: ``data_dir``, else ``$LOLA_BENCH_DATA``, else None."""
    root = data_dir if data_dir not in (None, "") else os.environ.get(DATA_ENV_VAR) or None
    return Path(root).expanduser().resolve() if root else None


def required_files(task: str, data_dir: str | os.PathLike) -> list[Path]:
    """Local files the offline version of canonical ``task`` reads."""
    root = Path(data_dir)
    if task == "piqa":
        return [root / "piqa" / "valid.jsonl", root / "piqa" / "valid-labels.lst"]
    if task in ("arc_easy", "arc_challenge"):
        return [root / "arc" / f"{task}_test.json"]
    if task == "hellaswag":
        return [root / "hellaswag" / "hellaswag_val_full.txt.bz2"]
    if task == "winogrande":
        return [root / "winogrande" / "dev.jsonl"]
    if task == "mmlu":
        return [
            root / "mmlu" / split / f"{subject}_{split}.csv"
            for subject in MMLU_SUBJECTS
            for split in ("test", "dev")
        ]
    raise ValueError(f"unknown commonsense task {task!r}")


def canonical_name(lm_eval_name: str) -> str:
    """``lola_piqa`` -> ``piqa``; official names pass through."""
    if lm_eval_name.startswith(LOCAL_PREFIX):
        return lm_eval_name[len(LOCAL_PREFIX) :]
    return lm_eval_name


def _normalise(tasks: list[str]) -> list[str]:
    if isinstance(tasks, str):
        tasks = [tasks]
    names: list[str] = []
    for t in tasks or []:
        name = str(t).strip().lower()
        if name not in KNOWN_TASKS:
            raise ValueError(f"unknown commonsense task {t!r}; known tasks: {', '.join(KNOWN_TASKS)}")
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError(f"no commonsense tasks given; known tasks: {', '.join(KNOWN_TASKS)}")
    return names


def resolve_tasks(tasks: list[str], data_dir: str | None) -> list[str]:
    """Validate canonical task names and return the lm-eval task names to run.

    Offline (``data_dir`` or ``$LOLA_BENCH_DATA`` set) the local ``lola_*`` names
    are returned after checking that every file they read exists; online the
    official names are returned. Raises ``ValueError`` with a one-line message
    for an unknown task, a missing data directory or a missing local file.
    Duplicates are dropped, order is kept.
    """
    names = _normalise(tasks)
    root = local_data_dir(data_dir)
    if root is None:
        return names
    if not root.is_dir():
        raise ValueError(f"data directory not found: {root}")
    for name in names:
        missing = [p for p in required_files(name, root) if not p.is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ValueError(f"{name}: missing local data file {missing[0]}{more}")
    return [LOCAL_PREFIX + name for name in names]


# ------------------------------------------------------------------ run helpers


@contextmanager
def offline_mode() -> Iterator[None]:
    """Force Hugging Face Hub/datasets offline mode; restore the previous state after.

    The environment variables are read when those libraries are imported, so the
    already-computed module constants are patched as well.
    """
    import datasets.config
    import huggingface_hub.constants

    consts = [
        (huggingface_hub.constants, "HF_HUB_OFFLINE"),
        (datasets.config, "HF_HUB_OFFLINE"),
        (datasets.config, "HF_DATASETS_OFFLINE"),
    ]
    saved_consts = [(mod, attr, getattr(mod, attr)) for mod, attr in consts if hasattr(mod, attr)]
    try:
        with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}):
            for mod, attr, _ in saved_consts:
                setattr(mod, attr, True)
            yield
    finally:
        for mod, attr, value in saved_consts:
            setattr(mod, attr, value)


class _DropCustomKwargsHint(logging.Filter):
    """Hide lm-eval's per-task "Custom kwargs can be passed to `--metadata`" hint."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed" not in record.getMessage()


@contextmanager
def _quiet_custom_dataset_hint() -> Iterator[None]:
    logger = logging.getLogger("lm_eval.api.task")
    f = _DropCustomKwargsHint()
    logger.addFilter(f)
    try:
        yield
    finally:
        logger.removeFilter(f)


def _jsonable(obj: Any) -> Any:
    """Recursively convert lm-eval output to plain JSON types (non-finite -> None)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        try:
            return _jsonable(obj.item())
        except (TypeError, ValueError, RuntimeError):
            pass
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return _jsonable(obj.tolist())
    return str(obj)


def _merge(into: dict, res: dict) -> None:
    """Merge one simple_evaluate() result into the accumulated raw results."""
    for key, value in res.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            into[key].update(value)
        else:
            into[key] = value


def _leaf_tasks(name: str, group_subtasks: dict[str, list[str]]) -> list[str]:
    children = group_subtasks.get(name)
    if not children:
        return [name]
    return [leaf for child in children for leaf in _leaf_tasks(child, group_subtasks)]


def _as_float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def _summary_rows(name: str, shots: int, res: dict) -> list[dict]:
    """Tidy rows (one per metric) for lm-eval task or group ``name``."""
    entry = res.get("results", {}).get(name) or res.get("groups", {}).get(name)
    if entry is None:
        raise RuntimeError(f"lm-eval returned no results for {name!r}")
    n_samples = res.get("n-samples", {})
    leaves = _leaf_tasks(name, res.get("group_subtasks", {}))
    n = sum(int(n_samples.get(t, {}).get("effective", 0)) for t in leaves)
    rows = []
    for metric in METRICS:
        key = f"{metric},none"
        if key in entry:
            rows.append(
                {
                    "task": canonical_name(name),
                    "metric": metric,
                    "value": _as_float(entry[key]),
                    "stderr": _as_float(entry.get(f"{metric}_stderr,none")),
                    "n": n,
                    "num_fewshot": int(shots),
                }
            )
    return rows


def _check_int(name: str, value: Any, *, minimum: int, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _place_model(model, device: str | None) -> None:
    """Move ``model`` to ``device`` unless it already lives there."""
    if not device:
        return
    import torch

    target = torch.device(device)
    current = getattr(model, "device", None)
    if (
        current is None
        or current.type != target.type
        or (target.index is not None and current.index != target.index)
    ):
        model.to(target)


# ----------------------------------------------------------------------- public


def run_commonsense(
    model,
    tokenizer,
    tasks: list[str],
    *,
    data_dir: str | None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 1,
    device: str = "cpu",
    log_samples: bool = False,
    progress: ProgressFn | None = None,
    finished: dict[str, dict] | None = None,
    on_task_done: TaskDoneFn | None = None,
    request_cache: str | os.PathLike | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Evaluate ``model`` on commonsense ``tasks`` with lm-eval.

    Args:
        model: a built transformers causal LM (possibly attention-patched). It is
            moved to ``device`` if it is not there already.
        tokenizer: its tokenizer (lm-eval may set a pad token on it).
        tasks: canonical names from ``KNOWN_TASKS``.
        data_dir: local data root (offline mode); None falls back to
            ``$LOLA_BENCH_DATA``, and if that is unset lm-eval downloads the data.
        limit: evaluate only the first ``limit`` docs of each lm-eval task
            (per subject for mmlu); None for all.
        num_fewshot: shots for every task; None means 5 for mmlu, 0 otherwise.
        batch_size: lm-eval batch size.
        device: torch device string.
        log_samples: keep lm-eval's per-sample records in the raw results.
        progress: ``progress(task, i, n_tasks)`` is called just before task
            number ``i`` (1-based) of ``n_tasks`` starts, with its canonical name.
        finished: results of tasks already evaluated by an earlier, interrupted
            run with the same settings, keyed by canonical name, as handed to
            ``on_task_done``; those tasks are not evaluated again.
        on_task_done: ``on_task_done(task, record)`` is called as soon as a task
            finishes, with a JSON-serialisable record (rows, lm-eval result,
            seconds, shots) that can be passed back through ``finished``.
        request_cache: path prefix of an lm-eval request cache (its ``use_cache``:
            a sqlite file ``<prefix>_rank0.db`` written after every request), so a
            task killed part-way redoes only the requests it had not answered. The
            cache is keyed by request text alone: give each model and attention
            configuration its own prefix.

    Returns:
        ``(summary, raw)``: ``summary`` has columns task, metric, value, stderr,
        n, num_fewshot (one row per task x metric: acc, and acc_norm where the
        task reports it); ``raw`` is lm-eval's results dict, merged over the
        tasks and made JSON-serialisable, plus a ``"lola_bench"`` entry recording
        the task mapping, data directory, offline flag and per-task seconds.
    """
    _check_int("limit", limit, minimum=1, allow_none=True)
    _check_int("num_fewshot", num_fewshot, minimum=0, allow_none=True)
    _check_int("batch_size", batch_size, minimum=1, allow_none=False)
    names = resolve_tasks(tasks, data_dir)
    root = local_data_dir(data_dir)
    offline = root is not None

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    rows: list[dict] = []
    raw: dict = {}
    seconds: dict[str, float] = {}
    shots_used: dict[str, int] = {}
    reused: list[str] = []
    with offline_mode() if offline else nullcontext(), _quiet_custom_dataset_hint():
        if offline:
            task_manager = TaskManager(
                include_path=str(LOCAL_TASKS_DIR),
                include_defaults=False,
                metadata={"data_dir": str(root)},
            )
        else:
            task_manager = TaskManager()
        _place_model(model, device)
        lm = None

        for i, name in enumerate(names, start=1):
            canon = canonical_name(name)
            shots = num_fewshot if num_fewshot is not None else DEFAULT_NUM_FEWSHOT.get(canon, 0)
            record = (finished or {}).get(canon)
            if record is not None:
                log.info("%s: reusing the result of an interrupted run", canon)
                rows.extend(record["rows"])
                _merge(raw, record["result"])
                seconds[canon] = record["seconds"]
                shots_used[canon] = record["num_fewshot"]
                reused.append(canon)
                continue
            if lm is None:
                lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
            if offline and shots > 0 and canon != "mmlu":
                log.warning(
                    "%s: no local train split; few-shot examples come from the evaluation split",
                    canon,
                )
            if progress is not None:
                progress(canon, i, len(names))
            t0 = time.perf_counter()
            res = simple_evaluate(
                model=lm,
                tasks=[name],
                num_fewshot=shots if shots > 0 else None,  # None -> lm-eval's 0 default
                limit=limit,
                batch_size=batch_size,
                device=device,
                log_samples=log_samples,
                task_manager=task_manager,
                use_cache=str(request_cache) if request_cache is not None else None,
            )
            if request_cache is not None:
                _close_request_cache(lm)
            seconds[canon] = round(time.perf_counter() - t0, 3)
            shots_used[canon] = shots
            task_rows = _summary_rows(name, shots, res)
            rows.extend(task_rows)
            res = _jsonable(res)
            _merge(raw, res)
            if on_task_done is not None:
                on_task_done(canon, {"rows": task_rows, "result": res, "seconds": seconds[canon],
                                     "num_fewshot": shots})

    raw["lola_bench"] = {
        "tasks": {canonical_name(n): n for n in names},
        "offline": offline,
        "data_dir": str(root) if root else None,
        "local_tasks_dir": str(LOCAL_TASKS_DIR) if offline else None,
        "num_fewshot": shots_used,
        "limit": limit,
        "seconds": seconds,
        "reused_from_interrupted_run": reused,
    }
    summary = pd.DataFrame(rows, columns=["task", "metric", "value", "stderr", "n", "num_fewshot"])
    return summary, _jsonable(raw)


def _close_request_cache(lm) -> None:
    """simple_evaluate(use_cache=...) wraps ``lm`` in a new CachingLM per call and leaves its sqlite connection
    (and commit thread) open: close it after each task, before the resume store may be deleted."""
    from lm_eval.api.model import CacheHook

    db = getattr(getattr(lm, "cache_hook", None), "dbdict", None)
    if db is not None:
        db.close()
    lm.set_cache_hook(CacheHook(None))


# ---------------------------------------------------------------- request lengths


def request_lengths(tokenizer, tasks: list[str], *, data_dir: str | None, limit: int | None = None,
                    num_fewshot: int | None = None) -> pd.DataFrame:
    """Tokens each lm-eval request feeds the model (context + continuation, minus the last token, as HFLM
    does), one row per request: task, doc, length. Builds the requests exactly as ``run_commonsense`` would
    (same task YAMLs, shots and few-shot seed), without running a model. Shows which requests ever outgrow
    LoLA's exact memories (window + sparse cache + sinks): the others are scored with exact softmax attention."""
    names = resolve_tasks(tasks, data_dir)
    root = local_data_dir(data_dir)
    from lm_eval.tasks import TaskManager, get_task_dict

    rows: list[dict] = []
    with offline_mode() if root is not None else nullcontext(), _quiet_custom_dataset_hint():
        if root is not None:
            tm = TaskManager(include_path=str(LOCAL_TASKS_DIR), include_defaults=False,
                             metadata={"data_dir": str(root)})
        else:
            tm = TaskManager()
        for name in names:
            shots = num_fewshot if num_fewshot is not None else DEFAULT_NUM_FEWSHOT.get(canonical_name(name), 0)
            for task in _flatten_tasks(get_task_dict([name], tm)):
                if shots > 0 and task.get_config("num_fewshot") != 0:  # as simple_evaluate(num_fewshot=shots)
                    task.set_config(key="num_fewshot", value=shots)
                elif task.get_config("num_fewshot") is None:
                    task.set_config(key="num_fewshot", value=0)
                task.set_fewshot_seed(seed=FEWSHOT_SEED)
                task.build_all_requests(limit=limit, rank=0, world_size=1)
                texts = [ctx + cont for ctx, cont in (inst.args for inst in task.instances)]
                # the tokenizer's own default for special tokens (a BOS where it adds one), as HFLM.tok_encode
                lengths = [len(ids) - 1 for ids in tokenizer(texts)["input_ids"]]
                docs = [inst.doc_id for inst in task.instances]
                rows += [{"task": canonical_name(name), "doc": d, "length": n} for d, n in zip(docs, lengths)]
    return pd.DataFrame(rows, columns=["task", "doc", "length"])


def _flatten_tasks(d) -> list:
    out = []
    for v in d.values():
        out += _flatten_tasks(v) if isinstance(v, dict) else [v]
    return out


def beyond_exact_shares(tokenizer, tasks: list[str], configs: dict, *, data_dir: str | None,
                        limit: int | None = None, num_fewshot: int | None = None) -> dict[str, dict[str, float]]:
    """Per named LolaConfig and task, the share of requests longer than the config's exact span: the only
    requests that can score differently from full attention. Empty without configs."""
    if not configs:
        return {}
    lengths = request_lengths(tokenizer, tasks, data_dir=data_dir, limit=limit, num_fewshot=num_fewshot)
    return {name: {t: float((g["length"] > cfg.exact_len).mean()) for t, g in lengths.groupby("task")}
            for name, cfg in configs.items()}


def length_table(lengths: pd.DataFrame, spans: dict[str, int]) -> pd.DataFrame:
    """Per task: requests, median / 90th percentile / max length, and for each named exact span the share of
    requests longer than it (those reach the linear memory)."""
    out = []
    for task, g in lengths.groupby("task", sort=False):
        row = {"task": task, "requests": len(g), "median": float(g["length"].median()),
               "p90": float(g["length"].quantile(0.9)), "max": int(g["length"].max())}
        for label, span in spans.items():
            row[f"share > {span} ({label})"] = float((g["length"] > span).mean())
        out.append(row)
    return pd.DataFrame(out)
