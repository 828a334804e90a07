"""Commonsense runs side by side: one row per task x metric, one column per attention variant."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..errors import UserError
from ..records import atomic_write_json, atomic_write_text, frame_to_markdown
from .labels import run_variant_label

COMPARISON_NOTE = ("`X ±` is lm-eval's stderr; `X − full` is the difference in the same metric on the same items "
                   "(blank where n differs); `X beyond exact span`: share of requests longer than the variant's exact "
                   "span (only they can score differently from full attention).")


def _cs_variant(row) -> str:
    sinks = row.get("sinks")
    return run_variant_label(row, [f"sinks={int(sinks)}"] if sinks and sinks == sinks and int(sinks) else [])


def commonsense_comparison(summary: pd.DataFrame) -> pd.DataFrame:
    """Wide table from commonsense summary rows (one or several runs concatenated): task, metric, n, then per
    variant the value (and its stderr), value minus full attention's where full was run on the same items, and
    (LoLA variants, when recorded) the share of requests longer than the variant's exact span.
    Rows of other models are kept apart by a model column when there are several."""
    df = summary.copy()
    df["variant"] = df.apply(_cs_variant, axis=1)
    keys = ["task", "metric"] + (["model"] if df["model"].nunique() > 1 else [])
    if df.duplicated(keys + ["variant"]).any():
        raise ValueError("the same task, metric and variant appears twice: compare one run per variant")
    order = sorted(df["variant"].unique(), key=lambda v: (v != "full", not v.startswith("base"), v))
    index = pd.MultiIndex.from_frame(df[keys].drop_duplicates())

    def wide(col: str) -> pd.DataFrame:  # every key row and every variant, NaN where missing (stderr "N/A": n=1)
        t = df.pivot_table(index=keys, columns="variant", values=col, aggfunc="first", dropna=False)
        if not isinstance(t.index, pd.MultiIndex):
            t.index = pd.MultiIndex.from_arrays([t.index], names=keys)
        return t.reindex(index=index, columns=order)

    value, err, n = wide("value"), wide("stderr"), wide("n")
    has_beyond = "beyond_exact_span" in df.columns and df["beyond_exact_span"].notna().any()
    beyond = wide("beyond_exact_span") if has_beyond else None
    out = index.to_frame(index=False)
    out["n"] = [int(x) if x == x else None for x in n.max(axis=1).tolist()]
    for v in order:
        out[v] = value[v].tolist()
        out[f"{v} ±"] = err[v].tolist()
        if v != "full" and "full" in order:
            diff, same_n = (value[v] - value["full"]).tolist(), (n[v] == n["full"]).tolist()
            out[f"{v} − full"] = [d if ok else float("nan") for d, ok in zip(diff, same_n)]
        if v != "full" and beyond is not None:
            out[f"{v} beyond exact span"] = beyond[v].tolist()
    task_order = {t: i for i, t in enumerate(dict.fromkeys(summary["task"]))}
    out = out.sort_values(["task", "metric"], key=lambda s: s.map(task_order) if s.name == "task" else s)
    return out.reset_index(drop=True)


def render_commonsense_report(dirs, out: str | Path) -> list[Path]:
    """comparison.{csv,md} from the summary.csv of one or several commonsense run directories, with config.json
    beside them (this command's provenance and each source run's)."""
    frames, sources = [], []
    for d in [Path(x) for x in dirs]:
        csv = d / "summary.csv"
        if not csv.is_file():
            raise UserError(f"no commonsense results at {d} (expected {csv})")
        try:
            frames.append(pd.read_csv(csv))
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise UserError(f"{csv} is not a readable results table: {' '.join(str(e).split())[:200]}") from None
        sources.append(str(d))
    try:
        table = commonsense_comparison(pd.concat(frames, ignore_index=True))
    except (ValueError, KeyError) as e:
        raise UserError(f"cannot compare {', '.join(sources)}: {' '.join(str(e).split())[:200]}") from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "comparison.csv", table.to_csv(index=False))
    md = ("# Commonsense: attention variants side by side\n\n"
          + frame_to_markdown(table)
          + "\n\n" + COMPARISON_NOTE + " Sources: " + ", ".join(f"`{s}`" for s in sources) + ".\n")
    atomic_write_text(out / "comparison.md", md)
    from ..provenance import provenance

    atomic_write_json(out / "config.json", {"command": "report (commonsense comparison)", "sources": sources,
                                            "source_configs": {s: _read_json(Path(s) / "config.json")
                                                               for s in sources},
                                            "provenance": provenance("cpu")})
    return [out / "comparison.csv", out / "comparison.md"]


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("provenance")
    except (OSError, ValueError, AttributeError):
        return None
