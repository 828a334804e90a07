"""Several RULER runs side by side: one row per task x context, per run and variant the accuracy (percent), n and a
95% Wilson interval, and the difference from full attention of the same run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..diagnostics.outcomes import NOTE as OUTCOME_NOTE
from ..diagnostics.outcomes import needle_outcomes
from ..errors import UserError
from ..records import atomic_write_json, atomic_write_text, frame_to_markdown
from ..stats import wilson_interval
from .labels import run_variant_label

RULER_NOTE = ("Accuracy in percent over n samples, `[lo, hi]` its 95% Wilson interval (partial credit counted as "
              "fractional successes). comparison.csv has one row per run, variant, task and context, with "
              "`minus_full`: the difference from full attention in the same run (same prompts).")


SETTING_COLUMNS = ("scorer", "gqa", "sinks", "combine", "feature_map")   # named in a label when they differ


BY_RUN_NOTE = ("`kept K%`: the share of the cell's samples whose needle is exact (window or sparse cache) in at least "
               "half of the LoLA layers when the question is read (needle diagnostics; `lola-bench ruler --help`).")


def _variant(row, varying: set[str]) -> str:
    details = [row[c] for c in ("combine", "feature_map") if c in row and isinstance(row[c], str)]
    for c in ("scorer", "gqa", "sinks"):
        if c in varying and not _missing(row.get(c)):
            details.append(f"sinks={int(row[c])}" if c == "sinks" else str(row[c]))
    return run_variant_label(row, details)


def _norm(x) -> str:
    """A setting as text, numbers alike whether pandas read them as int or float (4 and 4.0)."""
    try:
        return repr(float(x))
    except (TypeError, ValueError):
        return str(x)


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and x != x)


def is_ruler_summary(df: pd.DataFrame) -> bool:
    return {"task", "ctx", "accuracy", "attn", "n"} <= set(df.columns) and "metric" not in df.columns


def ruler_long(runs: list[tuple[str, pd.DataFrame]]) -> pd.DataFrame:
    """``runs``: (label, summary.csv frame) pairs -> one row per run x variant x task x ctx: accuracy (percent), n,
    the 95% Wilson interval, the difference from full attention in the same run, the settings that tell LoLA rows
    apart (scorer, gqa, sinks, combine, feature map; the variant label names scorer, gqa and sinks when they differ
    between the rows compared) and ``needle_kept`` where the run has needle diagnostics."""
    frames = [df[df["attn"] != "full"] for _, df in runs]
    varying = {c for c in SETTING_COLUMNS
               if len({_norm(x) for f in frames if c in f for x in f[c] if not _missing(x)}) > 1}
    rows = []
    for label, df in runs:
        full = {(r.task, r.ctx): r.accuracy for r in df[df["attn"] == "full"].itertuples()}
        for _, r in df.iterrows():
            lo, hi = wilson_interval(r["accuracy"] / 100 * r["n"], int(r["n"]))
            rows.append({"run": label, "variant": _variant(r, varying), "task": r["task"], "ctx": int(r["ctx"]),
                         "accuracy": r["accuracy"], "n": int(r["n"]), "ci_low": 100 * lo, "ci_high": 100 * hi,
                         "minus_full": (r["accuracy"] - full[r["task"], r["ctx"]]
                                        if r["attn"] != "full" and (r["task"], r["ctx"]) in full else None),
                         **{c: r.get(c) for c in (*SETTING_COLUMNS, "needle_kept")}})
    if not rows:
        raise UserError("no RULER rows to compare")
    return pd.DataFrame(rows)


def _cell(r) -> str:
    return f"{r['accuracy']:.0f} [{r['ci_low']:.0f}, {r['ci_high']:.0f}] (n={r['n']})"


def ruler_comparison(long: pd.DataFrame) -> pd.DataFrame:
    """Wide view for reading: rows task x ctx, one column per run and variant holding `acc [lo, hi] (n)`."""
    several = long["run"].nunique() > 1
    cell = long.apply(_cell, axis=1)
    name = (long["run"] + ": " + long["variant"]) if several else long["variant"]
    wide = pd.DataFrame({"task": long["task"], "ctx": long["ctx"], "name": name, "cell": cell})
    order = list(dict.fromkeys(name))
    table = wide.pivot_table(index=["task", "ctx"], columns="name", values="cell", aggfunc="first")
    return table[order].reset_index().fillna("")


def ruler_by_run(long: pd.DataFrame) -> pd.DataFrame:
    """The ablation view: one row per run and variant, one column per task and context holding `acc [lo, hi] (n)`,
    followed by `; kept K%` when the cell has needle diagnostics (``needle_kept``)."""
    kept = long["needle_kept"] if "needle_kept" in long else pd.Series([None] * len(long), index=long.index)
    cell = [_cell(r) + ("" if _missing(k) else f"; kept {k:.0f}%") for (_, r), k in zip(long.iterrows(), kept)]
    wide = pd.DataFrame({"run": long["run"], "variant": long["variant"], "col": long["task"] + " " +
                         long["ctx"].astype(str), "cell": cell})
    cols = list(dict.fromkeys(wide["col"]))
    table = wide.pivot_table(index=["run", "variant"], columns="col", values="cell", aggfunc="first", sort=False)
    return table[cols].reset_index().fillna("")


def read_summaries(dirs: list[Path]) -> list[tuple[str, pd.DataFrame]]:
    """(run name, its summary.csv) per run directory; one-line UserError for a missing or unreadable file."""
    runs = []
    for d in dirs:
        try:
            runs.append((d.name, pd.read_csv(d / "summary.csv")))
        except (OSError, ValueError, pd.errors.ParserError) as e:
            raise UserError(f"cannot read {d / 'summary.csv'}: {str(e).splitlines()[0]}") from None
    return runs


def render_ruler_report(dirs: list[Path], out: str | Path) -> list[Path]:
    """comparison.csv/.md (+ config.json naming the source runs) in ``out`` for RULER run directories."""
    long = ruler_long(read_summaries(dirs))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "comparison.csv", long.to_csv(index=False))
    md = ("# RULER: runs side by side\n\n" + frame_to_markdown(ruler_comparison(long)) + "\n" + RULER_NOTE + "\n\n"
          "## One row per run and variant\n\n" + frame_to_markdown(ruler_by_run(long)) + "\n" + BY_RUN_NOTE + "\n")
    atomic_write_text(out / "comparison.md", md)
    atomic_write_json(out / "comparison-sources.json", {"command": "report", "sources": [str(d) for d in dirs]})
    written = [out / "comparison.csv", out / "comparison.md", out / "comparison-sources.json"]
    outcomes = _outcomes(dirs)
    if not outcomes.empty:
        atomic_write_text(out / "needle_outcomes.csv", outcomes.to_csv(index=False))
        atomic_write_text(out / "needle_outcomes.md", "# Needle diagnostics by outcome\n\n"
                          + frame_to_markdown(outcomes) + "\n" + OUTCOME_NOTE + "\n")
        written += [out / "needle_outcomes.csv", out / "needle_outcomes.md"]
    return written


def _outcomes(dirs: list[Path]) -> pd.DataFrame:
    """``diagnostics.outcomes.needle_outcomes`` of every run's predictions.jsonl (runs without one are skipped),
    with the run's name first."""
    frames = []
    for d in dirs:
        try:
            preds = [json.loads(line) for line in (d / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
                     if line.strip()]
        except (OSError, ValueError):
            continue
        df = needle_outcomes(preds)
        if not df.empty:
            frames.append(df.assign(run=d.name)[["run", *df.columns]])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
