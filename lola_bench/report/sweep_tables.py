"""sweep.md: the accuracy / TTFT / memory pivots (λ × η) of a sweep.csv, its notes and its failed cells."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..attention.config import LolaConfig
from ..records import frame_to_markdown
from ..sweep.store import tidy
from .budget_tables import budget_tables
from .labels import BASE_LABEL, EVICTION_NAMES, FULL_LABEL, eviction_name, family_label  # noqa: F401  (re-exported)
from .ruler import exactness_note

VARIANT_KEYS = ["attn", "window", "lambda", "scorer", "feature_map", "evict_at"]


def _row_configs(df: pd.DataFrame) -> list:
    """A LolaConfig (window, lambda, chunk) per result row; None for full-attention rows."""
    out = []
    for _, r in df.iterrows():
        w, lam = pd.to_numeric(r.get("window"), errors="coerce"), pd.to_numeric(r.get("lambda"), errors="coerce")
        chunk = pd.to_numeric(r.get("chunk"), errors="coerce")
        sinks = pd.to_numeric(r.get("sinks"), errors="coerce")
        ok = r.get("attn") != "full" and w == w and lam == lam
        out.append(LolaConfig(window=int(w), sparse=int(lam), chunk=None if chunk != chunk else int(chunk),
                              sinks=0 if sinks != sinks else int(sinks)) if ok else None)
    return out


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The successful rows, numbers as numbers, and ``evict_at`` on every eviction row (rows written before the
    column existed chose at chunk boundaries: boundary), empty elsewhere."""
    ok = df[df["status"] == "ok"].copy()
    for col in ("window", "lambda", "ctx"):
        ok[col] = pd.to_numeric(ok[col], errors="coerce")
    at = (ok["evict_at"] if "evict_at" in ok.columns else pd.Series(None, index=ok.index)).astype(object)
    ok["evict_at"] = at.where(ok["attn"] != "evict", at.fillna("boundary"))
    return ok


def _family_rank(attn, lam) -> int:
    return {"base": 0, "lola": 1, "evict": 2, "full": 3}.get("base" if attn == "lola" and lam == 0 else attn, 1)


def _variant_label(row, scorers: int) -> str:
    fam = family_label(row["attn"], row.get("scorer"), row["lambda"], row.get("evict_at"))
    if row["attn"] == "full" or fam == BASE_LABEL:
        return fam
    if row["attn"] == "lola" and scorers > 1:
        fam += f" {row['scorer']}"
    return f"{fam} λ={int(row['lambda'])}"


def _variant_sort(row, scorers: int) -> tuple:
    lam = row["lambda"]
    return (_family_rank(row["attn"], lam), _variant_label(row, scorers).rpartition(" λ=")[0],
            0 if lam != lam or lam is None else int(lam))


def _pivot(g: pd.DataFrame, value: str) -> pd.DataFrame:
    """Rows: variants (base, scorer x lambda, full); columns: eta. Full attention fills every eta column."""
    scorers = g.loc[g["attn"] == "lola", "scorer"].nunique()
    g = g.assign(variant=[_variant_label(r, scorers) for _, r in g.iterrows()])
    order = {r["variant"]: _variant_sort(r, scorers) for _, r in g.iterrows()}
    lola = g[g["attn"] != "full"]
    etas = sorted(lola["window"].dropna().unique())
    if etas:
        table = lola.pivot_table(index="variant", columns="window", values=value, aggfunc="mean", dropna=False)
        table = table.reindex(columns=etas)
        table.columns = [f"η={int(e)}" for e in etas]
    else:
        table = pd.DataFrame(columns=[value], dtype=float)
    full = g.loc[g["attn"] == "full", value].dropna()
    if len(full):
        table.loc[FULL_LABEL] = full.mean()
    table = table.loc[sorted(table.index, key=lambda v: order[v])]
    return table.rename_axis("variant").reset_index()


def _groups(ok: pd.DataFrame, keys: list[str]):
    """(key dict, rows) per combination of ``keys`` plus feature map; full rows join every feature map."""
    for key, g in ok.groupby(keys, dropna=False, sort=True):
        key = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        fmaps = sorted(g.loc[g["attn"] != "full", "feature_map"].dropna().unique()) or [None]
        for fm in fmaps:
            rows = g[g["attn"].isin(["full", "evict"]) | (g["feature_map"] == fm)] if fm else g  # no φ: every table
            yield {**key, "feature_map": fm, "_n_fm": len(fmaps)}, rows


def _heading(key: dict, n_models: int) -> str:
    parts = []
    if n_models > 1:
        parts.append(str(key["model"]))
    if "task" in key:
        parts.append(str(key["task"]))
    if "ctx" in key and key["ctx"] == key["ctx"] and key["ctx"] is not None:
        parts.append(f"ctx {int(key['ctx'])}")
    if key.get("_n_fm", 1) > 1:
        parts.append(f"φ={key['feature_map']}")
    return ", ".join(parts)


def common_tasks(g: pd.DataFrame) -> tuple[pd.DataFrame, int, bool]:
    """The rows of the tasks every variant in ``g`` has finished (a mean over different task sets would compare
    unlike things), their count, and whether some tasks were left out."""
    keys = [k for k in VARIANT_KEYS if k in g.columns]
    sets = [set(t) for _, t in g.groupby(keys, dropna=False)["task"]]
    common = set.intersection(*sets) if sets else set()
    return g[g["task"].isin(common)], len(common), len(common) < g["task"].nunique()


def _sweep_tables(df: pd.DataFrame) -> list[str]:
    ok = ok_rows(df)
    if ok.empty:
        return ["No finished cell succeeded yet.\n"]
    out: list[str] = []
    n_models = ok["model"].nunique()
    for suite, s in ok.groupby("suite", sort=True):
        by = ["model", "ctx"] if suite == "ruler" else ["model"]
        out.append(f"## {suite}: accuracy (%) by λ × η\n")
        if s["task"].nunique() > 1:
            for key, g in _groups(s, by):
                g, n_tasks, partial = common_tasks(g)
                if n_tasks < 2:
                    continue
                heading = _heading(key, n_models)
                which = " (those every variant finished)" if partial else ""
                out.append(f"### mean over {n_tasks} tasks{which}{', ' + heading if heading else ''}\n")
                out.append(frame_to_markdown(_pivot(mean_over_tasks(g, VARIANT_KEYS, ["accuracy"]), "accuracy"),
                                             floatfmt=".1f"))
        for key, g in _groups(s, [*by, "task"]):
            out.append(f"### {_heading(key, n_models)}\n")
            out.append(frame_to_markdown(_pivot(g, "accuracy"), floatfmt=".1f"))
        if suite != "ruler":
            continue
        for value, title in (("ttft_s", "TTFT (s; median per cell, mean over tasks)"),
                             ("decode_ms_per_token", "decode latency (ms/token)"),
                             ("cache_mib", "attention cache after generation (MiB)"),
                             ("peak_mem_mib", "peak memory growth during generation (MiB)")):
            if s[value].notna().any():
                out.append(f"## {suite}: {title} by λ × η\n")
                if value == "decode_ms_per_token":
                    out.append(decode_paths_note(s))
                elif value in ("ttft_s", "peak_mem_mib"):
                    out.append(prefill_head_note(s))
                for key, g in _groups(s, by):
                    out.append(f"### {_heading(key, n_models) or 'all'}\n")
                    out.append(frame_to_markdown(_pivot(mean_over_tasks(g, VARIANT_KEYS, [value]), value)))
    return out


EAGER_DECODE = "eager (one forward per token)"     # evals.timing.EAGER_DECODE (no torch import here)
WARMUP_END = "generation ended during warm-up"     # a sample of a graphed cell too short to replay (timing.py)


def decode_paths_note(s: pd.DataFrame) -> str:
    """Which decode path the cells' decode latencies come from (``decode_impl``), so that a table mixing eager and
    graphed decode says so. Only rows with a decode latency count; rows from before the column ran the eager loop
    (ruler had no other), and a cell some of whose samples ended during the warm-up counts as the path of the rest."""
    timed = s[s["decode_ms_per_token"].notna()]
    impl = timed["decode_impl"] if "decode_impl" in timed.columns else pd.Series(index=timed.index, dtype=object)
    counts = impl.astype(object).map(_decode_path).value_counts()
    if len(counts) == 1:
        return f"Decode path: {counts.index[0]}.\n"
    listed = "; ".join(f"{k} ({v} cells)" for k, v in counts.items())
    return f"> **Decode paths differ between cells:** {listed}. See `decode_impl` in sweep.csv.\n"


def prefill_head_note(s: pd.DataFrame) -> str:
    """Where the prefill applied the output head (``prefill_logits``; rows from before the column: every prompt
    position), so that TTFT and peak memory tables say what they measure and when they mix the two."""
    head = s["prefill_logits"] if "prefill_logits" in s.columns else pd.Series(index=s.index, dtype=object)
    counts = head.astype(object).fillna("every position").value_counts()
    if len(counts) == 1:
        return f"Prefill output head on: {counts.index[0]}.\n"
    listed = "; ".join(f"{k} ({v} cells)" for k, v in counts.items())
    return (f"> **The prefill's output head differs between cells:** {listed}; the head over every position adds "
            "the same time and logits memory to every variant. See `prefill_logits` in sweep.csv.\n")


def _decode_path(impl) -> str:
    if not isinstance(impl, str) or not impl:
        return EAGER_DECODE
    parts = impl.split("; ")
    return "; ".join([p for p in parts if WARMUP_END not in p] or parts)


def mean_over_tasks(ok: pd.DataFrame, keys: list[str], values: list[str]) -> pd.DataFrame:
    return ok.groupby(keys, dropna=False)[values].mean().reset_index()


def sweep_markdown(df: pd.DataFrame, plots: list[Path] = ()) -> str:
    """sweep.md: summary line, notes, accuracy / TTFT / memory pivots (λ × η), failed cells, plot links."""
    df = tidy(df)
    ok = ok_rows(df)
    n_cells = df["cell_id"].nunique()
    n_failed = df.loc[df["status"] != "ok", "cell_id"].nunique()
    devices = ", ".join(map(str, df["device"].dropna().unique())) or "n/a"
    models = ", ".join(map(str, df["model"].dropna().unique()))
    lines = ["# LoLA sweep\n",
             f"{n_cells} finished cells ({n_cells - n_failed} ok, {n_failed} failed); models: {models}; devices: "
             + f"{devices}.\n",
             (f"> **Note.** {exactness_note(_row_configs(ok))} "
              "η is the sliding window, λ the sparse cache size (pairs); LoLA base = λ=0 (window + linear state only); "
              "eviction keeps the same window and λ pairs and drops the rest (no linear state), named by its scorer "
              "and by when it chooses. At each chunk boundary while the prompt is read (equal peak memory): "
              "StreamingLLM (sinks + window), H2O-style (accumulated attention mass), SnapKV-style (attention of the "
              "last chunk's queries), key-norm, random. After a full-attention prefill (`--evict-at prompt_end`, "
              "the published protocol; peak memory = the full KV cache during the prefill, the cache after it as "
              "above): H2O (mass from every prompt query), SnapKV (mass from the prompt's last η queries, pooled), "
              "the others '… after prefill'. "
              "Accuracy is in % (RULER: mean per-sample score; commonsense: lm-eval acc × 100).\n")]
    lola_rows = ok[ok["attn"] != "full"]
    horizon = pd.Series([c.exact_len if c else math.nan for c in _row_configs(lola_rows)], index=lola_rows.index,
                        dtype=float)  # chunk = η unless the CSV has a chunk column
    short = lola_rows[pd.to_numeric(lola_rows["mean_prompt_tokens"], errors="coerce") < horizon]
    if len(short):
        first = short.iloc[0]
        lines.append(f"> **Warning.** {len(short)} row(s) have a mean prompt shorter than their exact span (e.g. "
                     f"{first['task']} at ctx {first['ctx']:.0f}, η={first['window']:.0f}, λ={first['lambda']:.0f}: "
                     f"{horizon[first.name]:.0f} tokens): their LoLA numbers mostly equal full attention's and say "
                     "little about the sparse cache or the linear state.\n")
    lines += budget_tables(ok)
    lines += _sweep_tables(df)
    failed = df[df["status"] != "ok"]
    if len(failed):
        cols = [c for c in ["cell_id", "attn", "window", "lambda", "scorer", "evict_at", "task", "ctx", "status",
                            "error"] if c in failed.columns]
        lines += ["## Failed cells\n", frame_to_markdown(failed[cols]),
                  "\nRerun with `--retry-failed` to try them again.\n"]
    if plots:
        lines.append("## Plots\n")
        lines += [f"![{p.stem}]({p.name})\n" for p in plots]
        if ok.loc[ok["suite"] == "ruler", "ctx"].nunique() < 2:
            lines.append("(Accuracy vs context length needs at least two --ctx values.)\n")
    return "\n".join(lines)
