"""PNG plots of a sweep's successful ruler rows: accuracy vs cache memory (with the Pareto frontier), TTFT and
memory vs λ, accuracy vs context length."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from ..stats import wilson_interval
from ._mpl import pyplot
from .budget_plot import plot_at_budget
from .budget_tables import SCORER_ORDER
from .family_style import family_look
from .sweep_tables import FULL_LABEL, VARIANT_KEYS, common_tasks, family_label, mean_over_tasks, ok_rows


def pareto_frontier(x, y) -> list[bool]:
    """Mask of the points no other point dominates, where lower ``x`` and higher ``y`` are better.

    q dominates p when q.x <= p.x and q.y >= p.y with at least one strict; identical points are all kept.
    Points with a NaN coordinate are never on the frontier.
    """
    pts = [(float(a), float(b)) for a, b in zip(x, y)]
    valid = [not (math.isnan(a) or math.isnan(b)) for a, b in pts]
    mask = []
    for i, (px, py) in enumerate(pts):
        dominated = any(valid[j] and qx <= px and qy >= py and (qx < px or qy > py)
                        for j, (qx, qy) in enumerate(pts) if j != i)
        mask.append(valid[i] and not dominated)
    return mask


def accuracy_with_ci(ok: pd.DataFrame, keys: list[str], values: list[str]) -> pd.DataFrame:
    """``mean_over_tasks`` plus ``n_total`` (samples behind the mean: the tasks' n summed) and its 95% Wilson
    interval ``ci_low`` / ``ci_high`` in percent (the mean accuracy taken as a share of those samples; with equal n
    per task that is the pooled interval). No n column: the interval columns are NaN."""
    d = mean_over_tasks(ok, keys, values)
    if "n" not in ok.columns:
        return d.assign(n_total=math.nan, ci_low=math.nan, ci_high=math.nan)
    n = ok.groupby(keys, dropna=False)["n"].sum(min_count=1).reset_index(drop=True)
    d["n_total"] = n.values
    lo_hi = [wilson_interval(a / 100 * t, int(t)) if a == a and t == t and t > 0 else (math.nan, math.nan)
             for a, t in zip(d["accuracy"], d["n_total"])]
    d["ci_low"] = [100 * lo for lo, _ in lo_hi]
    d["ci_high"] = [100 * hi for _, hi in lo_hi]
    return d


def _error_bars(ax, x, y, lo, hi, color, **kw) -> None:
    """Vertical 95% interval bars (nothing where the interval is unknown)."""
    import numpy as np

    x, y, lo, hi = (np.asarray(v, dtype=float) for v in (x, y, lo, hi))
    ok = ~(np.isnan(lo) | np.isnan(hi) | np.isnan(y))
    if ok.any():
        yerr = [np.clip(y[ok] - lo[ok], 0, None), np.clip(hi[ok] - y[ok], 0, None)]   # rounding: never negative
        ax.errorbar(x[ok], y[ok], yerr=yerr, fmt="none", ecolor=color, elinewidth=1,
                    capsize=2.5, alpha=0.6, zorder=2.5, **kw)


def _n_note(ax, n) -> None:
    """``n=10 per point`` (or ``n=10–30``) in the panel's lower left corner: the samples behind each accuracy."""
    vals = sorted({int(v) for v in pd.Series(n).dropna()})
    if vals:
        text = f"n={vals[0]}" if len(vals) == 1 else f"n={vals[0]}–{vals[-1]}"
        ax.text(0.02, 0.02, f"{text} per point", transform=ax.transAxes, fontsize=8, color="0.3", va="bottom")


def _save(fig, path: Path, plt) -> Path:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _subplots(plt, n: int, width: float = 5.2, height: float = 4.0, ncols_max: int = 3):
    ncols = min(n, ncols_max)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def pareto_points(ok: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """One point per variant and context: accuracy (with its interval) and cache, averaged per context over only the
    tasks every variant there finished (a mean over unlike task sets would rank the variants by which tasks they have
    run, not by how well they do; none in common: each over its own). Also {ctx: (tasks averaged, some left out)}."""
    parts, n_common = [], {}
    for ctx, g in ok.groupby("ctx"):
        common, n, partial = common_tasks(g)
        n_common[ctx] = (n, partial)
        parts.append(common if n else g)
    d = accuracy_with_ci(pd.concat(parts), [*VARIANT_KEYS, "ctx"], ["accuracy", "cache_mib", "full_kv_mib"])
    return d, n_common


def _plot_pareto(ok: pd.DataFrame, model: str, out: Path, plt) -> Path | None:
    d, n_common = pareto_points(ok)
    if d["cache_mib"].isna().all():
        return None
    ctxs = sorted(d["ctx"].dropna().unique())
    lola = d[d["attn"] != "full"]
    styles = sorted(lola.loc[lola["attn"] == "lola", ["scorer", "feature_map"]].drop_duplicates()
                    .itertuples(index=False, name=None))
    multi_fm, multi_eta = lola["feature_map"].nunique() > 1, lola["window"].nunique() > 1
    looks: dict = {}                      # family label -> (legend order, look)
    fig, axes = _subplots(plt, len(ctxs))
    for ax, ctx in zip(axes, ctxs):
        g = d[d["ctx"] == ctx]
        pts = g[g["attn"] != "full"].dropna(subset=["cache_mib", "accuracy"])
        pts = pts.sort_values(["cache_mib", "accuracy"])
        front_mask = pareto_frontier(pts["cache_mib"], pts["accuracy"]) if len(pts) else []
        for k, ((_, r), on_front) in enumerate(zip(pts.iterrows(), front_mask)):
            key = (r["scorer"], r["feature_map"])
            idx = styles.index(key) if key in styles else 0
            look = family_look(r["attn"], r["scorer"], r["lambda"], r["evict_at"], idx)
            label = _point_family(r, multi_fm)
            looks.setdefault(label, (_family_order(r, idx), look))
            ax.scatter(r["cache_mib"], r["accuracy"], s=60 if r["attn"] == "evict" else 50, zorder=3,
                       **look.scatter_kw())
            _error_bars(ax, [r["cache_mib"]], [r["accuracy"]], [r["ci_low"]], [r["ci_high"]], look.color)
            if on_front or r["attn"] == "lola" or multi_eta:   # label what a reader looks for; the rest: the tables
                text = (f"η={int(r['window'])}, " if multi_eta else "") + f"λ={int(r['lambda'])}"
                ax.annotate(text, (r["cache_mib"], r["accuracy"]), fontsize=7, color="0.25",
                            xytext=(5, 4 if k % 2 == 0 else -11), textcoords="offset points")
        if len(pts):
            front = pts[front_mask].sort_values(["cache_mib", "accuracy"])
            ax.step(front["cache_mib"], front["accuracy"], where="post", color="0.35", lw=2.2, alpha=0.45,
                    zorder=2)
            ax.scatter(front["cache_mib"], front["accuracy"], s=170, color="0.35", alpha=0.25, zorder=2,
                       linewidths=0)
        full = g[g["attn"] == "full"]
        xs = list(pts["cache_mib"])
        if len(full):
            fx = full["cache_mib"].fillna(full["full_kv_mib"]).mean()
            ax.scatter([fx], [full["accuracy"].mean()], marker="*", s=180, color="black", zorder=4)
            _error_bars(ax, [fx], [full["accuracy"].mean()], [full["ci_low"].mean()], [full["ci_high"].mean()],
                        "black")
            ax.axhline(full["accuracy"].mean(), color="black", ls=":", lw=1)
            xs.append(fx)
        xs = [x for x in xs if x > 0]               # (NaN > 0 is False)
        if xs and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        ax.set_ylim(-4, 104)
        ax.margins(x=0.08)
        n, partial = n_common.get(ctx, (0, False))
        which = f"{n} task{'s' * (n != 1)}" + (" every point finished" if partial else "") if n else "unlike tasks"
        ax.set_title(f"ctx {int(ctx)} tokens (mean of {which})", fontsize=10)
        _n_note(ax, g["n_total"])
        ax.set_xlabel("attention cache after generation (MiB)")
        ax.set_ylabel("accuracy (%, mean over tasks)")
        ax.grid(alpha=0.3)
    handles = _family_handles(looks) + _legend_handles({}, (d["attn"] == "full").any(), frontier=True)
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    after = (lola["evict_at"] == "prompt_end").any()
    fig.suptitle(f"Accuracy vs cache memory — {model}\n(bars: 95% Wilson interval over the n samples"
                 + ("; hollow eviction markers: one compression after a full prefill)" if after else ")"))
    fig.tight_layout()
    return _save(fig, out, plt)


def _point_family(r, multi_fm: bool) -> str:
    """A Pareto point's family for the legend: LoLA by scorer (and feature map when several), its base, or the
    eviction baseline's name."""
    fam = family_label(r["attn"], r["scorer"], r["lambda"], r["evict_at"])
    if fam == "LoLA":
        fam += f", scorer {r['scorer']}" + (f", φ={r['feature_map']}" if multi_fm else "")
    return fam


def _family_order(r, lola_index: int) -> tuple:
    """Legend order: LoLA (by style), its base, then eviction by baseline (``SCORER_ORDER``), each chunk-boundary
    variant before its after-prefill one."""
    if r["attn"] == "evict":
        scorer = "sink" if r["lambda"] == 0 else r["scorer"]
        return 2, SCORER_ORDER.get(scorer, len(SCORER_ORDER)), int(r["evict_at"] == "prompt_end"), str(scorer)
    return (1, 0, 0, "") if r["attn"] == "base" or r["lambda"] == 0 else (0, lola_index, 0, "")


def _family_handles(looks: dict) -> list:
    from matplotlib.lines import Line2D

    return [Line2D([], [], ls="", marker=look.marker, markersize=7, markeredgecolor=look.color,
                   markerfacecolor=look.color if look.filled else "none", markeredgewidth=1.5, label=label)
            for label, (_, look) in sorted(looks.items(), key=lambda kv: kv[1][0])]


def _legend_handles(colors: dict, has_full: bool, frontier: bool = False) -> list:
    """η lines (``colors``: η -> colour; none on the Pareto plot, whose families carry the colours), the frontier
    and full attention."""
    from matplotlib.lines import Line2D

    h = [Line2D([], [], color=c, ls="-", label=f"η={int(e)}") for e, c in colors.items()]
    if frontier:
        h.append(Line2D([], [], color="0.35", lw=2.2, alpha=0.45, marker="o", markersize=12, markeredgewidth=0,
                        label="Pareto frontier (all but full)"))
    if has_full:
        h.append(Line2D([], [], color="black", marker="*" if frontier else None, markersize=11,
                        ls=":" if frontier else "--", label=FULL_LABEL))
    return h


def _plot_vs_lambda(ok: pd.DataFrame, model: str, values: list[tuple[str, str]], title: str, out: Path,
                    plt) -> Path | None:
    """One row of panels per ctx, one column per value: value vs lambda, one line per eta (x scorer)."""
    keys = [*VARIANT_KEYS, "ctx"]
    d = mean_over_tasks(ok, keys, [v for v, _ in values])
    values = [(v, label) for v, label in values if d[v].notna().any()]
    if not values:
        return None
    ctxs = sorted(d["ctx"].dropna().unique())
    lola = d[d["attn"] != "full"]
    lams = sorted(lola["lambda"].dropna().unique())
    if not lams:
        return None
    pos = {lam: i for i, lam in enumerate(lams)}
    etas = sorted(lola["window"].dropna().unique())
    scorers = sorted(lola.loc[lola["attn"] == "lola", "scorer"].dropna().unique())
    fms = sorted(lola["feature_map"].dropna().unique())
    combos = [("lola", s, fm) for s in (scorers or [None]) for fm in fms]   # (kind, scorer, φ | evict_at)
    combos += [("evict", s, at) for s, at in _eviction_families(lola)]
    # a family's colour and marker as in every sweep plot; the line style: η when several ran, else solid for
    # LoLA and chunk-boundary eviction and dashed for eviction after a full prefill
    looks = [family_look(kind, s, 1, fm if kind == "evict" else None, i) for i, (kind, s, fm) in enumerate(combos)]
    dashes = ["-", "--", "-.", ":", (0, (1, 1)), (0, (5, 1, 1, 1, 1, 1))]
    from matplotlib.lines import Line2D

    def style(ci: int, ei: int):
        kind, _, at = combos[ci]
        return dashes[ei % len(dashes)] if len(etas) > 1 else "--" if kind == "evict" and at == "prompt_end" else "-"

    if len(values) == 1:                       # one value: a row of panels, one per ctx
        fig, flat = _subplots(plt, len(ctxs), width=5.0, height=3.8)
        panels = [(flat[i], ctx, values[0]) for i, ctx in enumerate(ctxs)]
    else:                                      # several: one row per ctx, one column per value
        fig, axes = plt.subplots(len(ctxs), len(values), figsize=(5.4 * len(values), 3.8 * len(ctxs)),
                                 squeeze=False)
        panels = [(axes[r][c], ctx, v) for r, ctx in enumerate(ctxs) for c, v in enumerate(values)]
    for ax, ctx, (value, ylabel) in panels:
        g = d[d["ctx"] == ctx]
        for ei, eta in enumerate(etas):
            for ci, (kind, scorer, fm) in enumerate(combos):
                sel = g[(g["window"] == eta) & (g["feature_map"] == fm) &
                        ((g["attn"] == "base") | ((g["attn"] == "lola") & (g["scorer"] == scorer)))] if kind == "lola" \
                    else g[(g["window"] == eta) & (g["attn"] == "evict") & (g["evict_at"] == fm) &
                           ((g["scorer"] == scorer) | (g["lambda"] == 0))]
                sel = sel.sort_values("lambda")
                sel = sel.dropna(subset=[value])
                if len(sel):
                    look = looks[ci]
                    ax.plot([pos[x] for x in sel["lambda"]], sel[value], marker=look.marker, ms=5, color=look.color,
                            markerfacecolor=look.color if look.filled else "white", ls=style(ci, ei))
        full = g.loc[g["attn"] == "full", value].dropna()
        if len(full):
            ax.axhline(full.mean(), color="black", ls="--", lw=1.2)
        ax.set_xticks(range(len(lams)), [str(int(x)) for x in lams])
        ax.set_xlabel("λ (sparse cache size, pairs)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.08)          # from zero, with room above the highest line
        ax.set_title(f"{ylabel.split(' (')[0]}, ctx {int(ctx)} tokens", fontsize=10)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=look.color, marker=look.marker, ls=style(i, 0),
                      markerfacecolor=look.color if look.filled else "white",
                      label=_family_line_label(kind, s, fm, len(fms) > 1))
               for i, ((kind, s, fm), look) in enumerate(zip(combos, looks))]
    if len(etas) > 1:
        handles += [Line2D([], [], color="0.3", ls=dashes[i % len(dashes)], label=f"η={int(e)}")
                    for i, e in enumerate(etas)]
    handles += _legend_handles({}, (d["attn"] == "full").any())
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.suptitle(f"{title} — {model}")
    fig.tight_layout()
    return _save(fig, out, plt)


def _eviction_families(lola: pd.DataFrame) -> list[tuple[str, str]]:
    """(scorer, evict_at) of the eviction rows, sorted."""
    ev = lola[lola["attn"] == "evict"].dropna(subset=["scorer"])
    return sorted({(s, at) for s, at in zip(ev["scorer"], ev["evict_at"])})


def _family_line_label(kind: str, scorer, fm, multi_fm: bool) -> str:
    """A line standing for a family across λ: LoLA with its scorer (λ=0: its base), eviction by name (``fm``: its
    evict_at)."""
    if kind == "evict":
        return family_label("evict", scorer, 1, fm)   # the λ>0 name; its λ=0 point is StreamingLLM
    return f"LoLA, scorer {scorer}" + (f", φ={fm}" if multi_fm else "")


def _plot_vs_ctx(ok: pd.DataFrame, model: str, out: Path, plt) -> Path | None:
    """Accuracy vs ctx: one panel per scorer, one line per (eta, lambda); base and full in every panel."""
    keys = [*VARIANT_KEYS, "ctx"]
    d = accuracy_with_ci(ok, keys, ["accuracy"])
    ctxs = sorted(d["ctx"].dropna().unique())
    if len(ctxs) < 2:
        return None
    import matplotlib

    lola = d[d["attn"] != "full"]
    panels = [("lola", s, None) for s in sorted(lola.loc[lola["attn"] == "lola", "scorer"].dropna().unique())]
    panels += [("evict", s, at) for s, at in _eviction_families(lola)]
    panels = panels or [("lola", None, None)]
    lams = sorted(lola["lambda"].dropna().unique())
    etas = sorted(lola["window"].dropna().unique())
    cmap = matplotlib.colormaps["viridis"]
    lam_color = {lam: cmap(0.9 * i / max(1, len(lams) - 1)) for i, lam in enumerate(lams)}
    dashes = ["-", "--", "-.", ":"]
    fig, axes = _subplots(plt, len(panels))
    for ax, (kind, scorer, at) in zip(axes, panels):
        for ei, eta in enumerate(etas):
            for lam in lams:
                fam = (lola["attn"] == "base") | ((lola["attn"] == "lola") & (lola["scorer"] == scorer)) \
                    if kind == "lola" else (lola["attn"] == "evict") & (lola["evict_at"] == at) & \
                    ((lola["scorer"] == scorer) | (lam == 0))
                sel = lola[(lola["window"] == eta) & (lola["lambda"] == lam) & fam]
                sel = sel.groupby("ctx")[["accuracy", "ci_low", "ci_high"]].mean()
                if len(sel):
                    xs = [ctxs.index(c) for c in sel.index]
                    ax.plot(xs, sel["accuracy"].values, marker="o", ms=4, color=lam_color[lam],
                            ls=dashes[ei % len(dashes)])
                    _error_bars(ax, xs, sel["accuracy"], sel["ci_low"], sel["ci_high"], lam_color[lam])
        full = d[d["attn"] == "full"].groupby("ctx")[["accuracy", "ci_low", "ci_high"]].mean()
        if len(full):
            xs = [ctxs.index(c) for c in full.index]
            ax.plot(xs, full["accuracy"].values, color="black", marker="*", ms=9, ls="--")
            _error_bars(ax, xs, full["accuracy"], full["ci_low"], full["ci_high"], "black")
        ax.set_xticks(range(len(ctxs)), [str(int(c)) for c in ctxs])
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("accuracy (%, mean over tasks)")
        ax.set_ylim(-4, 104)
        ax.set_title(_family_line_label(kind, scorer, at, False) if scorer else "LoLA")
        _n_note(ax, d["n_total"])
        ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker="o", label=f"λ={int(lam)}" + (" (base)" if lam == 0 else ""))
               for lam, c in lam_color.items()]
    if len(etas) > 1:
        handles += [Line2D([], [], color="0.3", ls=dashes[i % len(dashes)], label=f"η={int(e)}")
                    for i, e in enumerate(etas)]
    if (d["attn"] == "full").any():
        handles.append(Line2D([], [], color="black", marker="*", ls="--", label=FULL_LABEL))
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.suptitle(f"Accuracy vs context length — {model}" + (f" (η={int(etas[0])})" if len(etas) == 1 else "")
                 + "\n(bars: 95% Wilson interval over the n samples)")
    fig.tight_layout()
    return _save(fig, out, plt)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_")


def sweep_plots(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """PNG plots of the successful ruler rows, one set per model."""
    ok = ok_rows(df)
    ok = ok[ok["suite"] == "ruler"]
    if ok.empty:
        return []
    plt = pyplot()
    out_dir = Path(out_dir)
    written: list[Path] = []
    models = sorted(ok["model"].astype(str).unique())
    for model in models:
        m = ok[ok["model"].astype(str) == model]
        sfx = f"_{_safe(model)}" if len(models) > 1 else ""
        for path in (
            _plot_pareto(m, model, out_dir / f"accuracy_vs_cache{sfx}.png", plt),
            plot_at_budget(m, model, out_dir / f"accuracy_at_budget{sfx}.png", plt),
            _plot_vs_lambda(m, model, [("ttft_s", "TTFT (s)")], "Time to first token vs λ",
                            out_dir / f"ttft_vs_lambda{sfx}.png", plt),
            _plot_vs_lambda(m, model, [("cache_mib", "attention cache (MiB)"),
                                       ("peak_mem_mib", "peak memory growth (MiB)")], "Memory vs λ",
                            out_dir / f"memory_vs_lambda{sfx}.png", plt),
            _plot_vs_ctx(m, model, out_dir / f"accuracy_vs_ctx{sfx}.png", plt),
        ):
            if path is not None:
                written.append(path)
    return written
