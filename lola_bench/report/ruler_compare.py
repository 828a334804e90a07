"""Several RULER runs side by side: one row per task x context, per run and variant the accuracy (percent), n and a
95% Wilson interval, and the difference from full attention of the same run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import UserError
from ..records import atomic_write_json, atomic_write_text, frame_to_markdown
from ..stats import wilson_interval
from .labels import run_variant_label

RULER_NOTE = ("Accuracy in percent over n samples, `[lo, hi]` its 95% Wilson interval (partial credit counted as "
              "fractional successes). comparison.csv has one row per run, variant, task and context, with "
              "`minus_full`: the difference from full attention in the same run (same prompts).")


def _variant(row) -> str:
    return run_variant_label(row, [row[c] for c in ("combine", "feature_map") if c in row and isinstance(row[c], str)])


def is_ruler_summary(df: pd.DataFrame) -> bool:
    return {"task", "ctx", "accuracy", "attn", "n"} <= set(df.columns) and "metric" not in df.columns


def ruler_long(runs: list[tuple[str, pd.DataFrame]]) -> pd.DataFrame:
    """``runs``: (label, summary.csv frame) pairs -> one row per run x variant x task x ctx: accuracy (percent), n,
    the 95% Wilson interval and the difference from full attention in the same run."""
    rows = []
    for label, df in runs:
        full = {(r.task, r.ctx): r.accuracy for r in df[df["attn"] == "full"].itertuples()}
        for _, r in df.iterrows():
            lo, hi = wilson_interval(r["accuracy"] / 100 * r["n"], int(r["n"]))
            rows.append({"run": label, "variant": _variant(r), "task": r["task"], "ctx": int(r["ctx"]),
                         "accuracy": r["accuracy"], "n": int(r["n"]), "ci_low": 100 * lo, "ci_high": 100 * hi,
                         "minus_full": (r["accuracy"] - full[r["task"], r["ctx"]]
                                        if r["attn"] != "full" and (r["task"], r["ctx"]) in full else None)})
    if not rows:
        raise UserError("no RULER rows to compare")
    return pd.DataFrame(rows)


def ruler_comparison(long: pd.DataFrame) -> pd.DataFrame:
    """Wide view for reading: rows task x ctx, one column per run and variant holding `acc [lo, hi] (n)`."""
    several = long["run"].nunique() > 1
    cell = long.apply(lambda r: f"{r['accuracy']:.0f} [{r['ci_low']:.0f}, {r['ci_high']:.0f}] (n={r['n']})", axis=1)
    name = (long["run"] + ": " + long["variant"]) if several else long["variant"]
    wide = pd.DataFrame({"task": long["task"], "ctx": long["ctx"], "name": name, "cell": cell})
    order = list(dict.fromkeys(name))
    table = wide.pivot_table(index=["task", "ctx"], columns="name", values="cell", aggfunc="first")
    return table[order].reset_index().fillna("")


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
    md = "# RULER: runs side by side\n\n" + frame_to_markdown(ruler_comparison(long)) + "\n" + RULER_NOTE + "\n"
    atomic_write_text(out / "comparison.md", md)
    atomic_write_json(out / "comparison-sources.json", {"command": "report", "sources": [str(d) for d in dirs]})
    return [out / "comparison.csv", out / "comparison.md", out / "comparison-sources.json"]
