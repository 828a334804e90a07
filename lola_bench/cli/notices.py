"""The loud one-line notices of a run: LoLA training-free, or with settings its checkpoint was not trained with."""

from __future__ import annotations

from .display import err_console


def checkpoint_notice(ckpt: str | None, variants) -> str | None:
    """One line when a LoLA variant (base or lola) runs without a checkpoint, or with a window or formula (combine)
    other than the checkpoint was trained with (its lola.json 'window', its 'trained_combine'; the pairings
    models.compat accepts, e.g. LoLCATs factors under the LoLA formula as the authors run them, are not flagged)."""
    lola = [v for v in variants if v.lola is not None and v.lola.fold]   # eviction has no feature map to train
    if not lola:
        return None
    if not ckpt:
        c = lola[0].lola
        return (f"notice: LoLA runs TRAINING-FREE (no checkpoint: feature map {c.feature_map}, combine {c.combine}, "
                f"{c.sinks} sinks); its accuracy is not that of a linearized model (pass --lola-ckpt)")
    from ..models.checkpoint import checkpoint_label, read_meta
    from ..models.compat import COMPATIBLE_COMBINE

    meta = read_meta(ckpt)
    window, combine = meta.get("window"), meta.get("trained_combine")
    diffs = []
    for v in lola:
        if window is not None and v.lola.window != window:
            diffs.append(f"window {v.lola.window} (trained with {window})")
        if combine and v.lola.combine != combine and (combine, v.lola.combine) not in COMPATIBLE_COMBINE:
            diffs.append(f"combine {v.lola.combine} (trained with {combine})")
    if not diffs:
        return None
    return (f"notice: LoLA runs with settings its checkpoint {checkpoint_label(ckpt)} was not trained with: "
            + ", ".join(dict.fromkeys(diffs)))


def print_checkpoint_notice(ckpt: str | None, variants) -> None:
    line = checkpoint_notice(ckpt, variants)
    if line:
        err_console.print(f"[bold yellow]{line}[/]", highlight=False, soft_wrap=True)


def add_checkpoint_column(df, ckpt: str | None):
    """The ``checkpoint`` column of a result table (empty on full-attention rows)."""
    from ..models.checkpoint import checkpoint_label

    if "attn" in df.columns and len(df):
        label = checkpoint_label(ckpt)
        df = df.copy()
        df["checkpoint"] = [None if a == "full" else label for a in df["attn"]]
    return df


def model_alias(spec: str) -> str:
    """--model as it will load: the embedded model's hub id runs the shipped copy unless the hub weights are cached
    (models.aliases), said in one notice line."""
    from ..models.aliases import resolve_alias

    spec, line = resolve_alias(spec)
    if line:
        err_console.print(f"[bold yellow]notice: {line}[/]", highlight=False, soft_wrap=True)
    return spec
