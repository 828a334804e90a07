"""accuracy_at_budget.png: an equal-memory sweep (``sweep --budget-mib``) read the way its question is asked. One
panel per context × budget, one bar per variant family (LoLA, then each eviction baseline; the λ = 0 references,
which ran without a budget, below a rule), the bar the mean accuracy over the tasks every family of the panel
finished with its 95% Wilson interval, the λ each family got and the cache it held at its end; full attention as
a dotted line with its own cache size. Families look as in every sweep plot (``family_style``)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..stats import wilson_interval
from .budget_tables import REFERENCE, BudgetPanel, budget_panels, panel_family
from .family_style import family_look
from .labels import FULL_LABEL


def panel_bars(p: BudgetPanel) -> tuple[pd.DataFrame, dict | None]:
    """The bars of a panel, top to bottom (label, look, accuracy over ``p.common``, its interval, λ, cache MiB,
    reference) and full attention's line (accuracy, interval, KV MiB; None when it has not run)."""
    bars, full = [], None
    lola_styles: list = []
    for reference, rows in ((False, p.rows), (True, p.refs)):
        for fam, g in rows.groupby(rows.apply(lambda r: panel_family(r, p.lola_scorers), axis=1), sort=False):
            r0 = g.iloc[0]
            g = g[g["task"].isin(p.common)] if p.common else g      # no task in common: each over its own
            acc = g.groupby("task")["accuracy"].mean().mean()
            n = pd.to_numeric(g["n"], errors="coerce").sum() if "n" in g.columns else 0
            lo, hi = wilson_interval(acc / 100 * n, int(n)) if n and acc == acc else (math.nan, math.nan)
            rec = {"label": fam, "accuracy": acc, "ci_low": 100 * lo, "ci_high": 100 * hi, "n": n}
            if fam == FULL_LABEL:
                kv = g["full_kv_mib"] if "full_kv_mib" in g.columns else g["cache_mib"]
                full = {**rec, "kv_mib": pd.to_numeric(kv, errors="coerce").mean()}
                continue
            if r0["attn"] == "lola" and r0["lambda"] != 0 and r0["scorer"] not in lola_styles:
                lola_styles.append(r0["scorer"])
            look = family_look(r0["attn"], r0.get("scorer"), r0["lambda"], r0.get("evict_at"),
                               lola_styles.index(r0["scorer"]) if r0["scorer"] in lola_styles else 0)
            lams = sorted({int(x) for x in pd.to_numeric(g["lambda"], errors="coerce").dropna()})
            bars.append({**rec, "label": fam + (REFERENCE if reference else ""), "look": look,
                         "lambda": "/".join(map(str, lams)) or "–", "reference": reference,
                         "cache_mib": pd.to_numeric(g["cache_mib"], errors="coerce").mean()})
    return pd.DataFrame(bars), full


def plot_at_budget(ok: pd.DataFrame, model: str, out: Path, plt) -> Path | None:
    """The panels of one model's budget rows (``ok``: its successful ruler rows); None when none has a budget."""
    panels = [p for p in budget_panels(ok) if str(p.model) == str(model)]
    if not panels:
        return None
    ctxs = sorted({p.ctx for p in panels})
    budgets = sorted({p.budget_mib for p in panels})
    per = {(p.ctx, p.budget_mib): (p, *panel_bars(p)) for p in panels}
    n_bars = max(len(bars) for _, bars, _ in per.values())
    fig, axes = plt.subplots(len(ctxs), len(budgets), figsize=(6.4 * len(budgets), 0.34 * n_bars * len(ctxs) + 1.6),
                             squeeze=False)
    for i, ctx in enumerate(ctxs):
        for j, budget in enumerate(budgets):
            if (ctx, budget) not in per:
                axes[i][j].set_visible(False)
                continue
            p, bars, full = per[ctx, budget]
            _panel(axes[i][j], bars, full, ctx, budget, len(p.common))
    fig.suptitle(f"Accuracy at equal cache bytes — {model}\n(bars: 95% Wilson interval over the n samples; "
                 "hatched: one compression after a full prefill)")
    fig.tight_layout()
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def _panel(ax, bars: pd.DataFrame, full: dict | None, ctx: int, budget: float, n_common: int) -> None:
    import numpy as np

    y = np.arange(len(bars))[::-1] + 0.0
    if bars["reference"].any():                   # a gap and a rule between the budget rows and the references
        first_ref = int(bars["reference"].to_numpy().argmax())
        y[first_ref:] -= 0.6
        ax.axhline(y[first_ref] + 0.8, color="0.6", lw=0.8)
    for yy, (_, b) in zip(y, bars.iterrows()):
        acc = 0.0 if b["accuracy"] != b["accuracy"] else b["accuracy"]
        ax.barh(yy, acc, height=0.7, alpha=0.55 if b["reference"] else 0.9, **b["look"].bar_kw())
        if b["ci_low"] == b["ci_low"]:
            ax.errorbar(acc, yy, xerr=[[max(0, acc - b["ci_low"])], [max(0, b["ci_high"] - acc)]], fmt="none",
                        ecolor="0.25", elinewidth=1, capsize=2.5)
        text = "not run" if b["accuracy"] != b["accuracy"] else f"{acc:.0f}"
        cache = "" if b["cache_mib"] != b["cache_mib"] else f", {b['cache_mib']:.1f} MiB"
        ax.text(101, yy, f"{text}   λ={b['lambda']}{cache}", va="center", fontsize=7.5, color="0.2")
    if full is not None and full["accuracy"] == full["accuracy"]:
        ax.axvline(full["accuracy"], color="black", ls=":", lw=1.3)
        ax.text(full["accuracy"], y.max() + 0.75, f"{FULL_LABEL}: {full['accuracy']:.0f} at {full['kv_mib']:.0f} MiB",
                fontsize=7.5, ha="center", va="bottom")
    ax.set_yticks(y, list(bars["label"]), fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_ylim(y.min() - 0.6, y.max() + 1.4)
    over = f"mean of {n_common} task{'s' * (n_common != 1)}" if n_common else "each over its own tasks"
    ax.set_xlabel(f"accuracy (%, {over})")
    ax.set_title(f"ctx {ctx}, budget {budget:g} MiB", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
