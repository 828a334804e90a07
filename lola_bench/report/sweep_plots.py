"""Tables and plots from result records (CSV/JSONL only, so reports can be re-rendered any time)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..records import frame_to_markdown


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def depth_heatmaps(predictions: list[dict], out_dir: str | Path) -> list[Path]:
    """One depth x context heatmap PNG per (attention variant, task) when several contexts ran."""
    df = pd.DataFrame(predictions)
    written: list[Path] = []
    if df.empty or df["ctx"].nunique() < 2 or df["depth"].isna().all():
        return written
    plt = _plt()
    df = df.dropna(subset=["depth"]).copy()
    df["depth_bin"] = (df["depth"] / 10).round().astype(int) * 10
    for (attn, task), g in df.groupby(["attn", "task"], dropna=False):
        pivot = g.pivot_table(index="depth_bin", columns="ctx", values="score", aggfunc="mean").sort_index()
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * pivot.shape[1], 4.2))
        im = ax.imshow(pivot.values, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(pivot.shape[1]), [str(c) for c in pivot.columns])
        ax.set_yticks(range(pivot.shape[0]), [f"{d}%" for d in pivot.index])
        for i in range(pivot.shape[0]):
            for j in range(pivot.shape[1]):
                v = pivot.values[i, j]
                if v == v:
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8)
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("needle depth")
        ax.set_title(f"{task} — {attn}")
        fig.colorbar(im, ax=ax, label="score")
        fig.tight_layout()
        path = Path(out_dir) / f"heatmap_{task}_{attn}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


# ---- sweeps ---------------------------------------------------------------------------------------

def _row_configs(df: pd.DataFrame) -> list:
    """A LolaConfig (window, lambda, chunk) per result row; None for full-attention rows."""
    from ..attention.config import LolaConfig

    out = []
    for _, r in df.iterrows():
        w, lam = pd.to_numeric(r.get("window"), errors="coerce"), pd.to_numeric(r.get("lambda"), errors="coerce")
        chunk = pd.to_numeric(r.get("chunk"), errors="coerce")
        sinks = pd.to_numeric(r.get("sinks"), errors="coerce")
        ok = r.get("attn") != "full" and w == w and lam == lam
        out.append(LolaConfig(window=int(w), sparse=int(lam), chunk=None if chunk != chunk else int(chunk),
                              sinks=0 if sinks != sinks else int(sinks)) if ok else None)
    return out


def exactness_note(configs) -> str:
    """Say how long a sequence must be before a LoLA setting differs from full attention (``LolaConfig.exact_len``):
    numbers from shorter prompts (most commonsense items) say nothing about the sparse cache or the linear state."""
    spans = sorted({(c.window, c.sparse, c.exact_len) for c in configs if c is not None})
    if not spans:
        return ""
    listed = "; ".join(f"η={w}, λ={s}: {n} tokens" for w, s, n in spans)
    return ("LoLA is exactly full softmax attention until a sequence (prompt + generated) outgrows the window and the "
            f"sparse cache, i.e. nothing is folded into the linear state up to ({listed}). Prompts shorter than "
            "that never reach LoLA's linear memory: for them LoLA equals full attention by construction.")


FULL_LABEL = "full attention"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


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


def _ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[df["status"] == "ok"].copy()
    for col in ("window", "lambda", "ctx"):
        ok[col] = pd.to_numeric(ok[col], errors="coerce")
    return ok


def _variant_label(row, scorers: int) -> str:
    if row["attn"] == "full":
        return FULL_LABEL
    if row["attn"] == "base" or row["lambda"] == 0:
        return "base (λ=0)"
    return (f"{row['scorer']} " if scorers > 1 else "") + f"λ={int(row['lambda'])}"


def _variant_sort(label: str) -> tuple:
    if label == FULL_LABEL:
        return (2, "", 0)
    if label.startswith("base"):
        return (0, "", 0)
    scorer, _, lam = label.rpartition("λ=")
    return (1, scorer, int(lam))


def _pivot(g: pd.DataFrame, value: str) -> pd.DataFrame:
    """Rows: variants (base, scorer x lambda, full); columns: eta. Full attention fills every eta column."""
    scorers = g.loc[g["attn"] == "lola", "scorer"].nunique()
    g = g.assign(variant=[_variant_label(r, scorers) for _, r in g.iterrows()])
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
    table = table.loc[sorted(table.index, key=_variant_sort)]
    return table.rename_axis("variant").reset_index()


def _groups(ok: pd.DataFrame, keys: list[str]):
    """(key dict, rows) per combination of ``keys`` plus feature map; full rows join every feature map."""
    for key, g in ok.groupby(keys, dropna=False, sort=True):
        key = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        fmaps = sorted(g.loc[g["attn"] != "full", "feature_map"].dropna().unique()) or [None]
        for fm in fmaps:
            rows = g[(g["attn"] == "full") | (g["feature_map"] == fm)] if fm else g
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


def _sweep_tables(df: pd.DataFrame) -> list[str]:
    ok = _ok_rows(df)
    if ok.empty:
        return ["No finished cell succeeded yet.\n"]
    out: list[str] = []
    n_models = ok["model"].nunique()
    for suite, s in ok.groupby("suite", sort=True):
        by = ["model", "ctx"] if suite == "ruler" else ["model"]
        out.append(f"## {suite}: accuracy (%) by λ × η\n")
        n_tasks = s["task"].nunique()
        if n_tasks > 1:
            for key, g in _groups(s, by):
                heading = _heading(key, n_models)
                out.append(f"### mean over {n_tasks} tasks{', ' + heading if heading else ''}\n")
                out.append(frame_to_markdown(_pivot(_mean_over_tasks(g, VARIANT_KEYS, ["accuracy"]), "accuracy"),
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
                for key, g in _groups(s, by):
                    out.append(f"### {_heading(key, n_models) or 'all'}\n")
                    out.append(frame_to_markdown(_pivot(_mean_over_tasks(g, VARIANT_KEYS, [value]), value)))
    return out


VARIANT_KEYS = ["attn", "window", "lambda", "scorer", "feature_map"]


def _mean_over_tasks(ok: pd.DataFrame, keys: list[str], values: list[str]) -> pd.DataFrame:
    return ok.groupby(keys, dropna=False)[values].mean().reset_index()


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


def _eta_colors(etas) -> dict:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {e: cmap(i % 10) for i, e in enumerate(sorted(etas))}


def _plot_pareto(ok: pd.DataFrame, model: str, out: Path, plt) -> Path | None:
    keys = [*VARIANT_KEYS, "ctx"]
    d = _mean_over_tasks(ok, keys, ["accuracy", "cache_mib", "full_kv_mib"])
    if d["cache_mib"].isna().all():
        return None
    ctxs = sorted(d["ctx"].dropna().unique())
    lola = d[d["attn"] != "full"]
    colors = _eta_colors(lola["window"].dropna().unique())
    styles = sorted(lola.loc[lola["attn"] == "lola", ["scorer", "feature_map"]].drop_duplicates()
                    .itertuples(index=False, name=None))
    multi_fm = lola["feature_map"].nunique() > 1
    fig, axes = _subplots(plt, len(ctxs))
    for ax, ctx in zip(axes, ctxs):
        g = d[d["ctx"] == ctx]
        pts = g[g["attn"] != "full"].dropna(subset=["cache_mib", "accuracy"])
        pts = pts.sort_values(["cache_mib", "accuracy"])
        for k, (_, r) in enumerate(pts.iterrows()):
            base = r["attn"] == "base"
            key = (r["scorer"], r["feature_map"])
            marker = MARKERS[styles.index(key) % len(MARKERS)] if key in styles else "o"
            c = colors.get(r["window"], "gray")
            ax.scatter(r["cache_mib"], r["accuracy"], s=46, marker=marker, zorder=3,
                       facecolors="none" if base else c, edgecolors=c, linewidths=1.4)
            ax.annotate(f"λ={int(r['lambda'])}", (r["cache_mib"], r["accuracy"]), fontsize=7, color="0.25",
                        xytext=(4, 4 if k % 2 == 0 else -11), textcoords="offset points")  # alternate: less overlap
        if len(pts):
            front = pts[pareto_frontier(pts["cache_mib"], pts["accuracy"])].sort_values(["cache_mib", "accuracy"])
            ax.step(front["cache_mib"], front["accuracy"], where="post", color="0.35", lw=2.2, alpha=0.45,
                    zorder=2)
            ax.scatter(front["cache_mib"], front["accuracy"], s=170, color="0.35", alpha=0.25, zorder=2,
                       linewidths=0)
        full = g[g["attn"] == "full"]
        xs = list(pts["cache_mib"])
        if len(full):
            fx = full["cache_mib"].fillna(full["full_kv_mib"]).mean()
            ax.scatter([fx], [full["accuracy"].mean()], marker="*", s=180, color="black", zorder=4)
            ax.axhline(full["accuracy"].mean(), color="black", ls=":", lw=1)
            xs.append(fx)
        xs = [x for x in xs if x > 0]               # (NaN > 0 is False)
        if xs and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        ax.set_ylim(-4, 104)
        ax.margins(x=0.08)
        ax.set_title(f"ctx {int(ctx)} tokens")
        ax.set_xlabel("attention cache after generation (MiB)")
        ax.set_ylabel("accuracy (%, mean over tasks)")
        ax.grid(alpha=0.3)
    handles = _legend_handles(plt, colors, styles, multi_fm, has_base=(lola["attn"] == "base").any(),
                              has_full=(d["attn"] == "full").any(), frontier=True)
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.suptitle(f"Accuracy vs cache memory — {model}")
    fig.tight_layout()
    return _save(fig, out, plt)


def _legend_handles(plt, colors: dict, styles: list, multi_fm: bool, has_base: bool, has_full: bool,
                    frontier: bool = False, lines: bool = False) -> list:
    from matplotlib.lines import Line2D

    h = [Line2D([], [], color=c, marker="o" if not lines else None, ls="-" if lines else "", label=f"η={int(e)}")
         for e, c in colors.items()]
    if not lines:
        for i, (scorer, fm) in enumerate(styles):
            h.append(Line2D([], [], color="0.3", marker=MARKERS[i % len(MARKERS)], ls="",
                            label=f"scorer {scorer}" + (f", φ={fm}" if multi_fm else "")))
        if has_base:
            h.append(Line2D([], [], color="0.3", marker="o", markerfacecolor="none", ls="", label="base (λ=0)"))
    if frontier:
        h.append(Line2D([], [], color="0.35", lw=2.2, alpha=0.45, marker="o", markersize=12, markeredgewidth=0,
                        label="Pareto frontier (LoLA/base)"))
    if has_full:
        h.append(Line2D([], [], color="black", marker="*" if frontier else None, markersize=11,
                        ls=":" if frontier else "--", label=FULL_LABEL))
    return h


def _plot_vs_lambda(ok: pd.DataFrame, model: str, values: list[tuple[str, str]], title: str, out: Path,
                    plt) -> Path | None:
    """One row of panels per ctx, one column per value: value vs lambda, one line per eta (x scorer)."""
    keys = [*VARIANT_KEYS, "ctx"]
    d = _mean_over_tasks(ok, keys, [v for v, _ in values])
    values = [(v, label) for v, label in values if d[v].notna().any()]
    if not values:
        return None
    ctxs = sorted(d["ctx"].dropna().unique())
    lola = d[d["attn"] != "full"]
    lams = sorted(lola["lambda"].dropna().unique())
    if not lams:
        return None
    pos = {lam: i for i, lam in enumerate(lams)}
    colors = _eta_colors(lola["window"].dropna().unique())
    scorers = sorted(lola.loc[lola["attn"] == "lola", "scorer"].dropna().unique())
    fms = sorted(lola["feature_map"].dropna().unique())
    combos = [(s, fm) for s in (scorers or [None]) for fm in fms]
    dashes = ["-", "--", "-.", ":"]
    from matplotlib.lines import Line2D

    if len(values) == 1:                       # one value: a row of panels, one per ctx
        fig, flat = _subplots(plt, len(ctxs), width=5.0, height=3.8)
        panels = [(flat[i], ctx, values[0]) for i, ctx in enumerate(ctxs)]
    else:                                      # several: one row per ctx, one column per value
        fig, axes = plt.subplots(len(ctxs), len(values), figsize=(5.4 * len(values), 3.8 * len(ctxs)),
                                 squeeze=False)
        panels = [(axes[r][c], ctx, v) for r, ctx in enumerate(ctxs) for c, v in enumerate(values)]
    for ax, ctx, (value, ylabel) in panels:
        g = d[d["ctx"] == ctx]
        for eta in sorted(colors):
            for ci, (scorer, fm) in enumerate(combos):
                sel = g[(g["window"] == eta) & (g["feature_map"] == fm) &
                        ((g["attn"] == "base") | (g["scorer"] == scorer))].sort_values("lambda")
                sel = sel.dropna(subset=[value])
                if len(sel):
                    ax.plot([pos[x] for x in sel["lambda"]], sel[value], marker="o", ms=4, color=colors[eta],
                            ls=dashes[ci % len(dashes)])
        full = g.loc[g["attn"] == "full", value].dropna()
        if len(full):
            ax.axhline(full.mean(), color="black", ls="--", lw=1.2)
        ax.set_xticks(range(len(lams)), [str(int(x)) for x in lams])
        ax.set_xlabel("λ (sparse cache size, pairs)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.08)          # from zero, with room above the highest line
        ax.set_title(f"{ylabel.split(' (')[0]}, ctx {int(ctx)} tokens", fontsize=10)
        ax.grid(alpha=0.3)
    handles = _legend_handles(plt, colors, [], False, False, has_full=(d["attn"] == "full").any(), lines=True)
    if len(combos) > 1:
        handles += [Line2D([], [], color="0.3", ls=dashes[i % len(dashes)],
                           label=f"scorer {s}" + (f", φ={fm}" if len(fms) > 1 else "")) for i, (s, fm) in
                    enumerate(combos)]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.suptitle(f"{title} — {model}")
    fig.tight_layout()
    return _save(fig, out, plt)


def _plot_vs_ctx(ok: pd.DataFrame, model: str, out: Path, plt) -> Path | None:
    """Accuracy vs ctx: one panel per scorer, one line per (eta, lambda); base and full in every panel."""
    keys = [*VARIANT_KEYS, "ctx"]
    d = _mean_over_tasks(ok, keys, ["accuracy"])
    ctxs = sorted(d["ctx"].dropna().unique())
    if len(ctxs) < 2:
        return None
    import matplotlib

    lola = d[d["attn"] != "full"]
    scorers = sorted(lola.loc[lola["attn"] == "lola", "scorer"].dropna().unique()) or [None]
    lams = sorted(lola["lambda"].dropna().unique())
    etas = sorted(lola["window"].dropna().unique())
    cmap = matplotlib.colormaps["viridis"]
    lam_color = {lam: cmap(0.9 * i / max(1, len(lams) - 1)) for i, lam in enumerate(lams)}
    dashes = ["-", "--", "-.", ":"]
    fig, axes = _subplots(plt, len(scorers))
    for ax, scorer in zip(axes, scorers):
        for ei, eta in enumerate(etas):
            for lam in lams:
                sel = lola[(lola["window"] == eta) & (lola["lambda"] == lam) &
                           ((lola["attn"] == "base") | (lola["scorer"] == scorer))]
                sel = sel.groupby("ctx")["accuracy"].mean()
                if len(sel):
                    ax.plot([ctxs.index(c) for c in sel.index], sel.values, marker="o", ms=4,
                            color=lam_color[lam], ls=dashes[ei % len(dashes)])
        full = d[d["attn"] == "full"].groupby("ctx")["accuracy"].mean()
        if len(full):
            ax.plot([ctxs.index(c) for c in full.index], full.values, color="black", marker="*", ms=9, ls="--")
        ax.set_xticks(range(len(ctxs)), [str(int(c)) for c in ctxs])
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("accuracy (%, mean over tasks)")
        ax.set_ylim(-4, 104)
        ax.set_title(f"scorer {scorer}" if scorer else "LoLA")
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
    fig.suptitle(f"Accuracy vs context length — {model}" + (f" (η={int(etas[0])})" if len(etas) == 1 else ""))
    fig.tight_layout()
    return _save(fig, out, plt)


def _safe(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_")


def sweep_plots(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """PNG plots of the successful ruler rows, one set per model."""
    ok = _ok_rows(df)
    ok = ok[ok["suite"] == "ruler"]
    if ok.empty:
        return []
    plt = _plt()
    out_dir = Path(out_dir)
    written: list[Path] = []
    models = sorted(ok["model"].astype(str).unique())
    for model in models:
        m = ok[ok["model"].astype(str) == model]
        sfx = f"_{_safe(model)}" if len(models) > 1 else ""
        for path in (
            _plot_pareto(m, model, out_dir / f"accuracy_vs_cache{sfx}.png", plt),
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


def sweep_markdown(df: pd.DataFrame, plots: list[Path] = ()) -> str:
    """sweep.md: summary line, notes, accuracy / TTFT / memory pivots (λ × η), failed cells, plot links."""
    from ..sweep import tidy

    df = tidy(df)
    ok = _ok_rows(df)
    n_cells = df["cell_id"].nunique()
    n_failed = df.loc[df["status"] != "ok", "cell_id"].nunique()
    devices = ", ".join(map(str, df["device"].dropna().unique())) or "n/a"
    models = ", ".join(map(str, df["model"].dropna().unique()))
    lines = ["# LoLA sweep\n",
             f"{n_cells} finished cells ({n_cells - n_failed} ok, {n_failed} failed); models: {models}; devices: "
             + f"{devices}.\n",
             (f"> **Note.** {exactness_note(_row_configs(ok))} "
              "η is the sliding window, λ the sparse cache size (pairs); base = λ=0 (window + linear state only). "
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
    lines += _sweep_tables(df)
    failed = df[df["status"] != "ok"]
    if len(failed):
        cols = ["cell_id", "attn", "window", "lambda", "scorer", "task", "ctx", "status", "error"]
        lines += ["## Failed cells\n", frame_to_markdown(failed[cols]),
                  "\nRerun with `--retry-failed` to try them again.\n"]
    if plots:
        lines.append("## Plots\n")
        lines += [f"![{p.stem}]({p.name})\n" for p in plots]
        if ok.loc[ok["suite"] == "ruler", "ctx"].nunique() < 2:
            lines.append("(Accuracy vs context length needs at least two --ctx values.)\n")
    return "\n".join(lines)


def render_sweep_report(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Write sweep.md and the PNG plots into ``out_dir``; return their paths (sweep.md first)."""
    from ..records import atomic_write_text
    from ..sweep import tidy

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = sweep_plots(tidy(df), out_dir)
    path = out_dir / "sweep.md"
    atomic_write_text(path, sweep_markdown(df, plots))
    return [path, *plots]


def render_report(dirs, out_dir: str | Path | None = None) -> list[Path]:
    """Re-render sweep.md and the plots from sweep.csv file(s) alone (no model, no cells/).

    One directory: written into it. Several: merged (deduplicated by cell_id) into ``out_dir``, which then
    also gets the merged sweep.csv. Commonsense run directories (summary.csv, no sweep.csv) get a side-by-side
    comparison of their variants instead (``render_commonsense_report``).
    """
    from ..errors import UserError
    from ..records import atomic_write_text
    from ..sweep import merge_sweeps

    dirs = [Path(dirs)] if isinstance(dirs, (str, Path)) else [Path(d) for d in dirs]
    if dirs and all((d / "summary.csv").is_file() and not (d / "sweep.csv").is_file() for d in dirs):
        if out_dir is None and len(dirs) > 1:
            raise UserError("several commonsense runs given: pass --out DIR for the comparison")
        return render_commonsense_report(dirs, out_dir if out_dir is not None else dirs[0])
    df = merge_sweeps(dirs)
    if out_dir is None:
        if len(dirs) > 1:
            raise UserError("several sweeps given: pass --out DIR for the merged report")
        return render_sweep_report(df, dirs[0] if dirs[0].is_dir() else dirs[0].parent)
    out = Path(out_dir)
    if len(dirs) == 1 and out.resolve() == dirs[0].resolve():
        return render_sweep_report(df, out)
    if (out / "cells").is_dir():
        raise UserError(f"{out} is a sweep directory (its sweep.csv is rebuilt from its cells): write the merged "
                        "report elsewhere")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "sweep.csv", df.to_csv(index=False))
    return [out / "sweep.csv", *render_sweep_report(df, out)]


# ---------------------------------------------------------------------------------------------------------------
# commonsense: one row per task x metric, one column per attention variant

COMPARISON_NOTE = ("`X ±` is lm-eval's stderr; `X − full` is the difference in the same metric on the same items "
                   "(blank where n differs); `X beyond exact span`: share of requests longer than the variant's exact "
                   "span (only they can score differently from full attention).")


def _cs_variant(row) -> str:
    if row["attn"] == "full":
        return "full"
    parts = [f"η={int(row['window'])}", f"λ={int(row['lambda'])}"]
    if row.get("sinks") and row["sinks"] == row["sinks"] and int(row["sinks"]):
        parts.append(f"sinks={int(row['sinks'])}")
    return f"{row['attn']} ({', '.join(parts)})"


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
    from ..errors import UserError
    from ..records import atomic_write_text

    frames, sources = [], []
    for d in [Path(x) for x in dirs]:
        csv = d / "summary.csv"
        if not csv.is_file():
            raise UserError(f"no commonsense results at {d} (expected {csv})")
        frames.append(pd.read_csv(csv))
        sources.append(str(d))
    try:
        table = commonsense_comparison(pd.concat(frames, ignore_index=True))
    except ValueError as e:
        raise UserError(str(e)) from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "comparison.csv", table.to_csv(index=False))
    md = ("# Commonsense: attention variants side by side\n\n"
          + frame_to_markdown(table)
          + "\n\n" + COMPARISON_NOTE + " Sources: " + ", ".join(f"`{s}`" for s in sources) + ".\n")
    atomic_write_text(out / "comparison.md", md)
    from ..provenance import provenance
    from ..records import atomic_write_json

    atomic_write_json(out / "config.json", {"command": "report (commonsense comparison)", "sources": sources,
                                            "source_configs": {s: _read_json(Path(s) / "config.json")
                                                               for s in sources},
                                            "provenance": provenance("cpu")})
    return [out / "comparison.csv", out / "comparison.md"]


def _read_json(path: Path):
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8")).get("provenance")
    except (OSError, ValueError, AttributeError):
        return None
