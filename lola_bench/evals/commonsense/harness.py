"""run_commonsense: one model through lm-eval's own evaluator, task by task, flattened into a tidy table."""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from typing import Any

import pandas as pd

from ...distributed import adopt_lm, world
from .tasks import (
    DEFAULT_NUM_FEWSHOT,
    LOCAL_TASKS_DIR,
    METRICS,
    ProgressFn,
    TaskDoneFn,
    _quiet_custom_dataset_hint,
    canonical_name,
    local_data_dir,
    log,
    offline_mode,
    resolve_tasks,
)


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
    keys = [(m, f"{m},none", f"{m}_stderr,none") for m in METRICS if f"{m},none" in entry]
    if not keys:    # another lm-eval task (online): every metric it reports, "<metric>,<filter>" as lm-eval names it
        keys = [(k.removesuffix(",none"), k, k.replace(",", "_stderr,", 1)) for k in entry
                if "," in k and "_stderr," not in k and isinstance(entry[k], (int, float))]
    return [{"task": canonical_name(name), "metric": metric, "value": _as_float(entry[key]),
             "stderr": _as_float(entry.get(err)), "n": n, "num_fewshot": int(shots)} for metric, key, err in keys]


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
                lm = adopt_lm(HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device))
            if offline and shots > 0 and canon != "mmlu":
                log.warning(
                    "%s: no local train split; few-shot examples come from the evaluation split",
                    canon,
                )
            if progress is not None:
                progress(canon, i, len(names))
            t0 = time.perf_counter()
            try:
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
            finally:  # also when interrupted: the cache file is complete before its checksum is taken
                if request_cache is not None:
                    _close_request_cache(lm)
            if world().parallel:    # data-parallel: lm-eval returns the gathered results on rank 0 only
                res = world().broadcast(_jsonable(res) if world().is_main else None)
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

