"""Tables and plots from result records (CSV/JSONL only, so reports can be re-rendered any time)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


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
