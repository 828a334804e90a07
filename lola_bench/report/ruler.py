"""Reports on RULER (and ruler-like) runs: depth x context heatmaps, accuracy vs needle_kept, and the note on LoLA's
exact span."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ._mpl import pyplot
from .labels import summary_variant_names


def depth_heatmaps(predictions: list[dict], out_dir: str | Path) -> list[Path]:
    """One depth x context heatmap PNG per (attention variant, task) when several contexts ran."""
    df = pd.DataFrame(predictions)
    written: list[Path] = []
    if df.empty or df["ctx"].nunique() < 2 or df["depth"].isna().all():
        return written
    plt = pyplot()
    df = df.dropna(subset=["depth"]).copy()
    df["depth_bin"] = (df["depth"] / 10).round().astype(int) * 10
    for (attn, task), g in df.groupby(["attn", "task"], dropna=False):
        pivot = g.pivot_table(index="depth_bin", columns="ctx", values="score", aggfunc="mean").sort_index()
        counts = g.pivot_table(index="depth_bin", columns="ctx", values="score", aggfunc="count").reindex_like(pivot)
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * pivot.shape[1], 4.2))
        im = ax.imshow(pivot.values, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(pivot.shape[1]), [str(c) for c in pivot.columns])
        ax.set_yticks(range(pivot.shape[0]), [f"{d}%" for d in pivot.index])
        for i in range(pivot.shape[0]):
            for j in range(pivot.shape[1]):
                v = pivot.values[i, j]
                if v == v:
                    ax.text(j, i, f"{v:.0f}\nn={int(counts.values[i, j])}", ha="center", va="center", fontsize=7)
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("needle depth")
        ax.set_title(f"{task} — {attn}\n(mean score of the n samples per cell)", fontsize=10)
        fig.colorbar(im, ax=ax, label="score")
        fig.tight_layout()
        path = Path(out_dir) / f"heatmap_{task}_{attn}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def needle_kept_plot(summary: pd.DataFrame, out_dir: str | Path) -> Path | None:
    """needle_kept.png: accuracy against ``needle_kept`` (% of samples whose needle was still exact when the question
    was read, see ``lola_bench.diagnostics.columns``), one point per (variant, task, ctx) cell with diagnostics, one
    marker per task and one colour per variant. None when no cell has the column."""
    if "needle_kept" not in summary:
        return None
    df = summary.dropna(subset=["needle_kept"])
    if df.empty:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    markers = dict(zip(sorted(df["task"].unique()), "osD^v<>pX*hP"))
    for i, ((attn, task), g) in enumerate(df.groupby(["attn", "task"])):
        ax.scatter(g["needle_kept"], g["accuracy"], marker=markers.get(task, "o"), color=f"C{i % 10}",
                   label=f"{attn} {task}", s=42)
        for _, r in g.iterrows():
            ax.annotate(str(r["ctx"]), (r["needle_kept"], r["accuracy"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.plot([0, 100], [0, 100], color="grey", lw=0.8, ls="--")
    ax.set_xlim(-4, 104)
    ax.set_ylim(-4, 104)
    ax.set_xlabel("needle_kept (% of samples: needle exact when the question is read)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("accuracy vs needle kept (labels: ctx)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(out_dir) / "needle_kept.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def accuracy_plot(summary: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """accuracy.png: accuracy (%) vs context, one panel per task, one line per attention variant, each point with
    its 95% Wilson interval as error bars and n in the panel title. Nothing for an empty summary."""
    from ..stats import wilson_interval

    df = summary.dropna(subset=["accuracy"]) if "accuracy" in summary.columns else summary.iloc[0:0]
    if df.empty:
        return []
    df = df.copy()
    if not {"accuracy_ci_low", "accuracy_ci_high"} <= set(df.columns):
        lo_hi = [wilson_interval(a / 100 * n, int(n)) for a, n in zip(df["accuracy"], df["n"])]
        df["accuracy_ci_low"], df["accuracy_ci_high"] = [100 * x[0] for x in lo_hi], [100 * x[1] for x in lo_hi]
    df["variant"] = summary_variant_names(df) if "window" in df.columns else df["attn"].astype(str)
    plt = pyplot()
    tasks, ctxs = list(dict.fromkeys(df["task"])), sorted(df["ctx"].unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        g = df[df["task"] == task]
        for variant, v in g.groupby("variant", sort=False):
            v = v.sort_values("ctx")
            xs = [ctxs.index(c) for c in v["ctx"]]
            ax.errorbar(xs, v["accuracy"], yerr=[(v["accuracy"] - v["accuracy_ci_low"]).clip(lower=0),
                                                 (v["accuracy_ci_high"] - v["accuracy"]).clip(lower=0)],
                        marker="o", ms=4, capsize=3, label=variant)
        ns = sorted({int(n) for n in g["n"]})
        ax.set_title(f"{task} (n={ns[0]}{'–' + str(ns[-1]) if len(ns) > 1 else ''} per point)", fontsize=10)
        ax.set_xticks(range(len(ctxs)), [str(int(c)) for c in ctxs])
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-4, 104)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle("RULER accuracy (bars: 95% Wilson interval)")
    fig.tight_layout()
    path = Path(out_dir) / "accuracy.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [path]


def exactness_note(configs) -> str:
    """Say how long a sequence must be before a LoLA setting differs from full attention (``LolaConfig.exact_len``):
    numbers from shorter prompts (most commonsense items) say nothing about the sparse cache or the linear state."""
    configs = [c for c in configs if c is not None]
    out = []
    spans = sorted({(c.window, c.sparse, c.exact_len) for c in configs if c.fold})
    if spans:
        listed = "; ".join(f"η={w}, λ={s}: {n} tokens" for w, s, n in spans)
        out.append("LoLA is exactly full softmax attention until a sequence (prompt + generated) outgrows the window "
                   f"and the sparse cache, i.e. nothing is folded into the linear state up to ({listed}). Prompts "
                   "shorter than that never reach LoLA's linear memory: for them LoLA equals full attention by "
                   "construction.")
    spans = sorted({(c.window, c.sparse, c.exact_len) for c in configs if not c.fold})
    if spans:
        listed = "; ".join(f"η={w}, λ={s}: {n} tokens" for w, s, n in spans)
        out.append("KV eviction keeps every pair, and so is full attention, until a sequence outgrows the window and "
                   f"the sparse cache ({listed}); after that the pairs it does not keep are dropped (no linear "
                   "state).")
    return " ".join(out)
