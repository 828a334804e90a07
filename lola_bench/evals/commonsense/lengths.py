"""How long commonsense requests are, against the exact span of each LoLA variant."""

from __future__ import annotations

from contextlib import nullcontext

import pandas as pd

from .tasks import (
    DEFAULT_NUM_FEWSHOT,
    FEWSHOT_SEED,
    LOCAL_TASKS_DIR,
    _quiet_custom_dataset_hint,
    canonical_name,
    local_data_dir,
    offline_mode,
    resolve_tasks,
)

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
