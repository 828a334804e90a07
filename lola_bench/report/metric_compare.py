"""Speed and perplexity runs side by side: one long comparison.csv (a row per run, variant and setting) and a
comparison.md with one table per measure (rows: the setting, e.g. ctx; columns: run and variant)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import UserError
from ..records import atomic_write_json, atomic_write_text, frame_to_markdown, with_int_columns
from .labels import run_variant_label

# kind -> (title, the columns a row is keyed by, [(measure column, its heading)], a note)
KINDS: dict[str, tuple[str, list[str], list[tuple[str, str]], str]] = {
    "speed": ("Prefill and decode latency", ["ctx"],
              [("ttft_s", "TTFT (s, median)"), ("ttft_vs_full", "TTFT / full attention's (same run)"),
               ("decode_ms_per_token", "decode (ms per token, mean of the timed tokens; median of runs)"),
               ("decode_amortized_ms_per_token", "decode (ms per token over a whole chunk, merge included)"),
               ("peak_mem_mib", "peak memory (MiB)")],
              "Medians over each run's --repeats; timings from different machines or loads are not comparable."),
    "perplexity": ("Perplexity", ["text", "seq_len", "max_tokens"],
                   [("perplexity", "perplexity"), ("vs_full", "perplexity / full attention's (same run)")],
                   "Perplexity over non-overlapping --seq-len sequences of the text (lower is better)."),
}


def _variant(row) -> str:
    details = [str(row[c]) for c in ("feature_map", "combine") if c in row and isinstance(row[c], str)]
    if "scorer" in row and isinstance(row["scorer"], str) and row["scorer"] != "sre":
        details.append(f"scorer {row['scorer']}")
    sinks = row.get("sinks")
    if sinks is not None and sinks == sinks and int(sinks):
        details.append(f"sinks={int(sinks)}")
    window = row.get("window")
    if row["attn"] != "full" and (window is None or window != window):     # no window recorded: the mode alone
        return row["attn"]
    return run_variant_label(row, details)


def metric_long(kind: str, runs: list[tuple[str, pd.DataFrame]]) -> pd.DataFrame:
    """(label, summary.csv frame) pairs -> one row per run, variant and setting with the kind's measures."""
    _, keys, measures, _ = KINDS[kind]
    frames = []
    for label, df in runs:
        need = {"attn", *keys, measures[0][0]}
        if not need <= set(df.columns):
            raise UserError(f"{label}: not a {kind} summary (missing {', '.join(sorted(need - set(df.columns)))})")
        df = df.copy()
        if kind == "perplexity":
            full = {tuple(r[k] for k in keys): r["perplexity"] for _, r in df[df["attn"] == "full"].iterrows()}
            df["vs_full"] = [r["perplexity"] / full[k] if (k := tuple(r[c] for c in keys)) in full else None
                             for _, r in df.iterrows()]
        variant = df.apply(_variant, axis=1)
        same = df[keys].astype(str).agg("|".join, axis=1) + "|" + variant     # two variants one label: numbered
        variant = variant + same.groupby(same).cumcount().map(lambda i: f" #{i + 1}" if i else "")
        cols = [c for c, _ in measures if c in df.columns]
        extra = [c for c in ("implementation", "checkpoint", "device") if c in df.columns]
        frames.append(pd.concat([pd.DataFrame({"run": label, "variant": variant}), df[keys + cols + extra]], axis=1))
    if not frames or all(f.empty for f in frames):
        raise UserError(f"no {kind} rows to compare")
    return with_int_columns(pd.concat(frames, ignore_index=True))


def metric_tables(kind: str, long: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Per measure: rows the settings, one column per run and variant (the run named when there are several)."""
    _, keys, measures, _ = KINDS[kind]
    name = (long["run"] + ": " + long["variant"]) if long["run"].nunique() > 1 else long["variant"]
    order = list(dict.fromkeys(name))
    key_frame = long[keys].astype(object).where(long[keys].notna(), "")
    out = []
    for col, heading in measures:
        if col not in long.columns or long[col].isna().all():
            continue
        wide = pd.concat([key_frame, pd.DataFrame({"name": name, "value": long[col]})], axis=1)
        table = wide.pivot_table(index=keys, columns="name", values="value", aggfunc="first", sort=False)
        out.append((heading, table.reindex(columns=[o for o in order if o in table.columns]).reset_index()))
    return out


def render_metric_report(kind: str, dirs: list[Path], out: str | Path) -> list[Path]:
    """comparison.csv/.md (+ comparison-sources.json naming the source runs) in ``out`` for speed or perplexity run
    directories, one or several."""
    title, _, _, note = KINDS[kind]
    from .ruler_compare import read_summaries

    long = metric_long(kind, read_summaries(dirs))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "comparison.csv", long.to_csv(index=False))
    parts = [f"# {title}: runs side by side\n"]
    for heading, table in metric_tables(kind, long):
        parts.append(f"## {heading}\n\n{frame_to_markdown(table)}\n")
    parts.append(note + " comparison.csv has one row per run, variant and setting. Sources: "
                 + ", ".join(f"`{d}`" for d in dirs) + ".\n")
    atomic_write_text(out / "comparison.md", "\n".join(parts))
    atomic_write_json(out / "comparison-sources.json", {"command": f"report ({kind} comparison)",
                                                        "sources": [str(d) for d in dirs]})
    return [out / "comparison.csv", out / "comparison.md", out / "comparison-sources.json"]
