"""lm-eval's own output files from a commonsense result: the results JSON under the official task names
(``results["piqa"]["acc,none"]``, never ``lola_piqa``) and ``--log_samples``' per-sample JSONL files."""

from __future__ import annotations

import json

from .tasks import LOCAL_PREFIX

# sections of an lm-eval result keyed by task (or group) name
_KEYED = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples",
          "samples", "task_hashes")


def _local_names(raw: dict) -> dict[str, str]:
    """Every local task / group name in ``raw`` (``lola_mmlu_anatomy``) -> its official name (``mmlu_anatomy``)."""
    names = set()
    for section in _KEYED:
        value = raw.get(section)
        if isinstance(value, dict):
            names.update(value)
            for sub in value.values() if section == "group_subtasks" else ():
                names.update(sub or ())
    return {n: n[len(LOCAL_PREFIX):] for n in names if isinstance(n, str) and n.startswith(LOCAL_PREFIX)}


def _rename_alias(alias, mapping: dict[str, str]):
    if not isinstance(alias, str):
        return alias
    head = alias[: len(alias) - len(alias.lstrip(" -"))]     # lm-eval indents subtasks as " - name"
    return head + mapping.get(alias[len(head):], alias[len(head):])


def _rename_fields(entry, mapping: dict[str, str]):
    """A result / config entry with its own name fields (name, task, group, alias) official."""
    if not isinstance(entry, dict):
        return entry
    out = dict(entry)
    for field in ("name", "task", "group"):
        if isinstance(out.get(field), str):
            out[field] = mapping.get(out[field], out[field])
    if "alias" in out:
        out["alias"] = _rename_alias(out["alias"], mapping)
    return out


def official_results(raw: dict) -> tuple[dict, dict[str, list]]:
    """``raw`` (one variant's lm-eval result, possibly under the local ``lola_*`` task names) -> (the same result
    with every task and group named as lm-eval names it, without per-sample records; those records by official
    task name). Names that are already official pass through."""
    mapping = _local_names(raw)
    out = {}
    for key, value in raw.items():
        if key in _KEYED and isinstance(value, dict):
            value = {mapping.get(k, k): v for k, v in value.items()}
            if key == "group_subtasks":
                value = {k: [mapping.get(s, s) for s in (v or [])] for k, v in value.items()}
            elif key in ("results", "groups", "configs"):
                value = {k: _rename_fields(v, mapping) for k, v in value.items()}
        out[key] = value
    samples = out.pop("samples", None) or {}
    return out, samples


def _sanitize(x):
    """lm-eval's ``sanitize_list``: nested lists kept, every leaf as a string."""
    return [_sanitize(i) for i in x] if isinstance(x, (list, tuple)) else str(x)


def sample_lines(samples: list[dict]) -> str:
    """One task's per-sample records as lm-eval's ``--log_samples`` writes them (``samples_<task>_<date>.jsonl``):
    ``arguments`` as ``{gen_args_i: {arg_j: ...}}``, ``resps`` / ``filtered_resps`` with string leaves, ``target``
    as a string, one JSON object per line."""
    lines = []
    for s in samples:
        s = dict(s)
        s["arguments"] = {f"gen_args_{i}": {f"arg_{j}": a for j, a in enumerate(arg if isinstance(arg, (list, tuple))
                                                                                 else [arg])}
                          for i, arg in enumerate(s.get("arguments") or [])}
        for k in ("resps", "filtered_resps"):
            if k in s:
                s[k] = _sanitize(s[k])
        if "target" in s:
            s["target"] = str(s["target"])
        lines.append(json.dumps(s, default=str, ensure_ascii=False))
    return "".join(line + "\n" for line in lines)


def write_lm_eval_files(run, raw_by_variant: dict[str, dict], samples_by_variant: dict[str, dict],
                        model_name: str) -> list[str]:
    """Into a RunDir: ``lm_eval/<variant>/results.json`` (lm-eval's results file, official task names, plus
    ``model_name``) and, for ``--log-samples``, ``lm_eval/<variant>/samples_<task>.jsonl``. Returns the names."""
    written = []
    for variant, res in raw_by_variant.items():
        name = f"lm_eval/{variant}/results.json"
        run.write_json(name, {**res, "model_name": model_name})
        written.append(name)
        for task, samples in (samples_by_variant.get(variant) or {}).items():
            name = f"lm_eval/{variant}/samples_{task}.jsonl"
            run.write_text(name, sample_lines(samples))
            written.append(name)
    return written
