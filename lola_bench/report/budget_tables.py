"""sweep.md's equal-memory tables: every variant at each cache budget (``sweep --budget-mib``), side by side.

A budget cell's λ was chosen so that its cache bytes (window + sparse + state, as ``sweep.budget`` counts them) match
the budget; the table shows per context and budget one row per variant family (LoLA, StreamingLLM, H2O, SnapKV, ...)
with the λ it got, the cache it measured after generation, its accuracy per task and the mean over the tasks it
finished. Full attention and the λ = 0 variants (LoLA base, the window alone under eviction) ran without a budget:
they close every table as references, with their own cache size.
"""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd

from ..records import frame_to_markdown
from .labels import FULL_LABEL, family_label

REFERENCE = " (reference, no budget)"


def panel_family(row, lola_scorers: int) -> str:
    """The row's family label (``labels.family_label``); LoLA also by its scorer when a panel has several."""
    fam = family_label(row["attn"], row.get("scorer"), row["lambda"], row.get("evict_at"))
    if row["attn"] == "lola" and fam == "LoLA" and lola_scorers > 1:
        fam += f", scorer {row['scorer']}"
    return fam


SCORER_ORDER = {"sre": 0, "sink": 1, "attention": 2, "snapkv": 3, "key_norm": 4, "random": 5, "recency": 6}


def _table(rows: pd.DataFrame, tasks: list[str], common: list[str], lola_scorers: int,
           reference: bool) -> pd.DataFrame:
    out = []
    for fam, g in rows.groupby(rows.apply(lambda r: panel_family(r, lola_scorers), axis=1), sort=False):
        acc = g.groupby("task")["accuracy"].mean()
        lam = sorted({int(x) for x in g["lambda"].dropna()})
        cache = "cache_mib" if fam != FULL_LABEL else "full_kv_mib"
        rec = {"variant": fam + (REFERENCE if reference else ""),
               "λ": "–" if not lam else "/".join(map(str, lam)),
               "cache MiB": pd.to_numeric(g[cache], errors="coerce").mean()}
        rec.update({t: acc.get(t, float("nan")) for t in tasks})
        if len(common) > 1:
            rec[f"mean of {len(common)}"] = acc[common].mean()
        out.append(rec)
    return pd.DataFrame(out)


class BudgetPanel(NamedTuple):
    """One model × context × budget of an equal-memory sweep."""
    model: str
    ctx: int
    budget_mib: float
    rows: pd.DataFrame      # the budget's rows, in family order (LoLA, then eviction by scorer, boundary first)
    refs: pd.DataFrame      # full attention and the λ = 0 variants of this model and context (no budget)
    tasks: list[str]        # every task of this model and context
    common: list[str]       # the tasks every family of rows and refs finished (what a mean may average)
    lola_scorers: int       # LoLA scorers among the budget rows (more than one: families named by scorer)


def budget_panels(ok: pd.DataFrame):
    """The ``BudgetPanel``s of the ruler rows, by model, context and budget; none when no row has a budget."""
    if "budget_mib" not in ok.columns:
        return
    budget = pd.to_numeric(ok["budget_mib"], errors="coerce")
    if not budget.notna().any():
        return
    ok = ok.assign(budget_mib=budget)
    for (model, ctx), g in ok[ok["suite"] == "ruler"].groupby(["model", "ctx"], sort=True):
        refs = g[g["budget_mib"].isna()]          # full attention and the λ = 0 variants (LoLA base, window only)
        refs = refs[(refs["attn"] == "full") | (pd.to_numeric(refs["lambda"], errors="coerce") == 0)]
        lola_scorers = g.loc[(g["attn"] == "lola") & g["budget_mib"].notna(), "scorer"].nunique()
        for b, rows in g[g["budget_mib"].notna()].groupby("budget_mib", sort=True):
            at = rows["evict_at"] if "evict_at" in rows.columns else pd.Series(None, index=rows.index)
            rows = rows.assign(_rank=rows["attn"].map({"lola": 0, "evict": 1}).fillna(2),
                               _scorer=rows["scorer"].map(SCORER_ORDER).fillna(len(SCORER_ORDER)),
                               _at=(at == "prompt_end").astype(int))
            rows = rows.sort_values(["_rank", "_scorer", "_at"], kind="stable")
            both = pd.concat([rows, refs])
            # a mean compares only the tasks every row of the table finished
            fams = [panel_family(r, lola_scorers) for _, r in both.iterrows()]
            done = [set(t) for _, t in both.groupby(pd.Series(fams, index=both.index))["task"]]
            common = sorted(set.intersection(*done)) if done else []
            yield BudgetPanel(model, int(ctx), float(b), rows, refs, sorted(g["task"].unique()), common,
                              lola_scorers)


def budget_tables(ok: pd.DataFrame) -> list[str]:
    """Markdown sections (empty when no row has a budget): per model × context × budget, the variants compared."""
    panels = list(budget_panels(ok))
    if not panels:
        return []
    out = ["## ruler: accuracy (%) at equal cache bytes\n",
           "Each budget row's λ was chosen so that its attention cache (window + sparse + state) fits the budget; "
           "`cache MiB` is what it held after generation (eviction after a full prefill also grew by the generated "
           "tokens). `mean of k` averages the k tasks that every row of its table finished; an empty cell has not run "
           "yet.\n"]
    n_models = ok["model"].nunique()
    for p in panels:
        table = pd.concat([_table(p.rows, p.tasks, p.common, p.lola_scorers, False),
                           _table(p.refs, p.tasks, p.common, p.lola_scorers, True)], ignore_index=True)
        where = f"{p.model}, " if n_models > 1 else ""
        out.append(f"### {where}ctx {p.ctx}, budget {p.budget_mib:g} MiB\n")
        out.append(frame_to_markdown(table, floatfmt=".1f"))
    return out
