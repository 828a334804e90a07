"""Commonsense task names, their offline data files and lm-eval task resolution (online vs offline)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

DEFAULT_TASKS: tuple[str, ...] = ("piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande")
KNOWN_TASKS: tuple[str, ...] = DEFAULT_TASKS + ("mmlu",)
DEFAULT_NUM_FEWSHOT: dict[str, int] = {"mmlu": 5}
METRICS: tuple[str, ...] = ("acc", "acc_norm")

DATA_ENV_VAR = "LOLA_BENCH_DATA"
FEWSHOT_SEED = 1234  # lm-eval's default few-shot sampler seed (simple_evaluate's fewshot_random_seed)
LOCAL_TASKS_DIR = Path(__file__).resolve().parent / "task_yamls"   # shipped in the package (wheel too)
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


def lm_eval_task_names() -> frozenset[str]:
    """Every task, group and tag lm-eval's TaskManager knows (indexing its YAMLs takes seconds: called only for a
    name outside ``KNOWN_TASKS``). Raises ValueError (one line) when lm-eval cannot be imported."""
    global _LM_EVAL_NAMES
    if _LM_EVAL_NAMES is None:
        try:
            from lm_eval.tasks import TaskManager
        except ImportError as e:
            raise ValueError(f"lm-eval is not importable ({e}); only {', '.join(KNOWN_TASKS)} can be checked") \
                from None
        _LM_EVAL_NAMES = frozenset(TaskManager().all_tasks)
    return _LM_EVAL_NAMES


_LM_EVAL_NAMES: frozenset[str] | None = None


def _normalise(tasks: list[str], online: bool = False) -> list[str]:
    """Canonical names, duplicates dropped. Offline only ``KNOWN_TASKS`` (the shipped YAMLs); online also any task
    lm-eval's TaskManager knows (checked there)."""
    if isinstance(tasks, str):
        tasks = [tasks]
    names: list[str] = []
    for t in tasks or []:
        name = str(t).strip()
        name = name.lower() if name.lower() in KNOWN_TASKS else name
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError(f"no commonsense tasks given; known tasks: {', '.join(KNOWN_TASKS)}")
    other = [n for n in names if n not in KNOWN_TASKS]
    if other and not online:
        raise ValueError(f"unknown commonsense task {other[0]!r}; offline (local mirror) tasks: "
                         f"{', '.join(KNOWN_TASKS)}; any lm-eval task name works with --online")
    if other:
        unknown = [n for n in other if n not in lm_eval_task_names()]
        if unknown:
            raise ValueError(f"unknown lm-eval task(s) {', '.join(repr(n) for n in unknown)} (not in lm-eval's "
                             "TaskManager; `lm_eval ls tasks` lists them)")
    return names


def resolve_tasks(tasks: list[str], data_dir: str | None) -> list[str]:
    """Validate canonical task names and return the lm-eval task names to run.

    Online (no data directory) any task lm-eval's TaskManager knows is accepted as well as ``KNOWN_TASKS``.
    Offline (``data_dir`` or ``$LOLA_BENCH_DATA`` set) the local ``lola_*`` names
    are returned after checking that every file they read exists; online the
    official names are returned. Raises ``ValueError`` with a one-line message
    for an unknown task, a missing data directory or a missing local file.
    Duplicates are dropped, order is kept.
    """
    root = local_data_dir(data_dir)
    names = _normalise(tasks, online=root is None)
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

