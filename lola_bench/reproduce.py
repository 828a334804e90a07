"""Rerun a recorded run and compare: ``lola-bench reproduce RUN_DIR``.

A run directory's config.json records the command line that made it (``provenance.command``) and the settings
it resolved to. ``rerun_args`` rebuilds that command for a new directory (optionally with fewer --samples /
--limit), ``compare_summaries`` lines the two summary.csv files up row by row: accuracy-like columns as exact
differences (reproduced - original), timing columns as ratios (reproduced / original), other columns as
equal or not.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import shlex
from pathlib import Path

import pandas as pd

from .errors import UserError

KEY_COLUMNS = ("model", "attn", "window", "lambda", "sinks", "scorer", "feature_map", "task", "ctx", "metric",
               "seq_len", "combine", "gqa", "chunk")
EXACT_COLUMNS = ("accuracy", "value", "stderr", "acc_norm", "accuracy_stderr", "perplexity", "n")
OVERRIDABLE = {"samples": "--samples", "limit": "--limit"}
SKIP_SETTINGS = {"samples", "limit", "chat_template_applied"}


def is_timing(col: str) -> bool:
    return col.endswith("_s") or "ms_per" in col or col.endswith("_vs_full") or "tok_per_s" in col


def read_config(run_dir: str | Path) -> dict:
    f = Path(run_dir) / "config.json"
    if not f.is_file():
        raise UserError(f"{run_dir} is not a lola-bench run directory (no config.json)")
    try:
        cfg = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"corrupt {f}: {e}") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("provenance"), dict) or \
            not isinstance(cfg["provenance"].get("command"), str):
        raise UserError(f"{f} records no command line (provenance.command): it cannot be rerun")
    return cfg


def recorded_args(cfg: dict) -> list[str]:
    """The recorded command's arguments, without the program name."""
    args = shlex.split(cfg["provenance"]["command"])[1:]
    if cfg.get("command") not in args:
        raise UserError(f"the recorded command line {cfg['provenance']['command']!r} is not a "
                        f"`lola-bench {cfg.get('command')}` command")
    return args


def _set_option(args: list[str], flag: str, value) -> list[str]:
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if a == flag:
            i += 2
            continue
        if a.startswith(flag + "="):
            i += 1
            continue
        out.append(a)
        i += 1
    return out if value is None else [*out, flag, str(value)]


def rerun_args(cfg: dict, out: str | Path, samples: int | None = None, limit: int | None = None) -> list[str]:
    """The recorded command with --out replaced by ``out`` and --samples / --limit overridden when given."""
    args = recorded_args(cfg)
    if samples is not None:
        if cfg["command"] != "ruler":
            raise UserError(f"--samples applies to ruler runs; this run is `{cfg['command']}`")
        args = _set_option(args, "--samples", samples)
    if limit is not None:
        if cfg["command"] != "commonsense":
            raise UserError(f"--limit applies to commonsense runs; this run is `{cfg['command']}`")
        args = _set_option(args, "--limit", limit)
    args = [a for a in args if a != "--overwrite"]
    if cfg["command"] == "ruler" and "prefill_logits" not in (cfg.get("ruler") or {}) \
            and "--prefill-logits" not in args:
        args += ["--prefill-logits", "all"]     # recorded before the flag: its prefill applied the head everywhere
    return _set_option(args, "--out", out)


def default_out(run_dir: str | Path) -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    p = Path(run_dir)
    return p.parent / f"{p.name}-reproduce-{stamp}"


def settings_differences(orig: dict, new: dict) -> list[str]:
    """Recorded settings that differ between the two config.json files (variants and the command's own block,
    minus what the reproduction overrides)."""
    notes = []
    command = orig.get("command")
    for key in ("attention", command, "lola_checkpoint"):
        a, b = orig.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if k not in SKIP_SETTINGS and a.get(k) != b.get(k):
                    notes.append(f"{key}.{k}: original {a.get(k)!r}, reproduced {b.get(k)!r}")
        elif a != b:
            notes.append(f"{key}: original {json.dumps(a)}, reproduced {json.dumps(b)}")
    return notes


def _num(x):
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def compare_summaries(orig: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """One row per (summary row, column): original, reproduced, and the difference (exact columns), ratio
    (timing columns) or equal (others). Rows are matched on the key columns both tables have."""
    keys = [c for c in KEY_COLUMNS if c in orig.columns and c in new.columns]
    a = orig.copy()
    b = new.copy()
    for df in (a, b):
        for k in keys:
            df[k] = df[k].astype(str)
    merged = a.merge(b, on=keys, how="outer", suffixes=("@orig", "@new"), indicator=True)
    cols = [c for c in orig.columns if c in new.columns and c not in keys]
    rows = []
    for _, r in merged.iterrows():
        key = {k: r[k] for k in keys}
        if r["_merge"] != "both":
            rows.append({**key, "column": "(row)", "kind": "missing",
                         "original": "present" if r["_merge"] == "left_only" else "absent",
                         "reproduced": "present" if r["_merge"] == "right_only" else "absent",
                         "difference": None, "ratio": None, "same": False})
            continue
        for c in cols:
            x, y = r[f"{c}@orig"], r[f"{c}@new"]
            nx, ny = _num(x), _num(y)
            row = {**key, "column": c, "original": x, "reproduced": y, "difference": None, "ratio": None}
            if c in EXACT_COLUMNS:
                row["kind"] = "exact"
                row["difference"] = None if nx is None or ny is None else ny - nx
                row["same"] = (nx == ny) if nx is not None and ny is not None else (str(x) == str(y))
            elif is_timing(c):
                row["kind"] = "timing"
                row["ratio"] = ny / nx if nx and ny is not None else None
                row["same"] = None
            else:
                row["kind"] = "other"
                both_missing = pd.isna(x) and pd.isna(y) if not isinstance(x, (list, dict)) else False
                row["same"] = bool(both_missing) or (nx == ny if nx is not None and ny is not None
                                                     else str(x) == str(y))
                if nx is not None and ny is not None:
                    row["difference"] = ny - nx
            rows.append(row)
    return pd.DataFrame(rows, columns=[*keys, "column", "kind", "original", "reproduced", "difference", "ratio",
                                       "same"])


def exact_columns_identical(cmp: pd.DataFrame) -> bool:
    sub = cmp[cmp["kind"].isin(["exact", "missing"])]
    return bool(len(sub)) and bool(sub["same"].astype(bool).all())


def reproduce(run_dir: str | Path, out: str | Path | None = None, samples: int | None = None,
              limit: int | None = None, *, runner) -> tuple[Path, pd.DataFrame, list[str]]:
    """Rerun RUN_DIR's recorded command into ``out`` and compare. ``runner(args)`` runs a lola-bench command line
    (the CLI passes cli.reproduce.run_cli, which runs it in this process). Returns (new run dir, comparison,
    settings notes); writes reproduce.csv / reproduce.md into the new run directory."""
    from .records import atomic_write_text, frame_to_markdown

    cfg = read_config(run_dir)
    orig_summary = Path(run_dir) / "summary.csv"
    if not orig_summary.is_file():
        raise UserError(f"{run_dir} has no summary.csv to compare against")
    out = Path(out) if out else default_out(run_dir)
    args = rerun_args(cfg, out, samples, limit)
    runner(args)
    new_cfg = read_config(out)
    cmp = compare_summaries(pd.read_csv(orig_summary), pd.read_csv(out / "summary.csv"))
    notes = settings_differences(cfg, new_cfg)
    cmp.to_csv(out / "reproduce.csv", index=False)
    head = [f"# Reproduction of {run_dir}", "", f"Command: `lola-bench {shlex.join(args)}`", "",
            f"Original command: `{cfg['provenance']['command']}`", "",
            "Exact columns (accuracy, n, ...): reproduced - original; timing columns: reproduced / original.", "",
            f"Exact columns identical: {'yes' if exact_columns_identical(cmp) else 'no'}", ""]
    if notes:
        head += ["Recorded settings that differ:", "", *[f"- {n}" for n in notes], ""]
    atomic_write_text(out / "reproduce.md", "\n".join(head) + "\n" + frame_to_markdown(cmp) + "\n")
    return out, cmp, notes
