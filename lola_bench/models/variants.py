"""Put a loaded model into one attention variant (full / base / lola / evict), loading a linearization checkpoint
(never for evict: eviction runs the unmodified model's projections and has no feature map)."""

from __future__ import annotations

import contextlib

from ..settings import FULL, AttentionSettings
from .patch import implementation_used, is_patched, patch_model, unpatch_model


def apply_attention(model, attn: AttentionSettings, ckpt: str | None = None, allow=()) -> dict:
    """Patch (or unpatch) ``model`` in place for ``attn``. Returns a description of what ran (for config.json).

    The checkpoint must fit the config (``models.compat``): a feature map, formula, sinks, head count or head dim
    that disagrees with it raises, unless that setting was chosen explicitly (``attn.origin`` names flags and
    presets; ``allow`` adds names), which runs with a one-line warning. A learned map needs a checkpoint."""
    from .compat import check_checkpoint, check_weights

    if attn.mode == "full":
        if is_patched(model):
            unpatch_model(model)
        return {"mode": "full", "checkpoint": None}
    if not attn.lola.fold:  # eviction: nothing learned to load
        patch_model(model, attn.lola, attn.kernels)
        return {"mode": attn.mode, "checkpoint": None}
    check_weights(attn.lola.feature_map, ckpt)
    meta = None
    if ckpt:
        from .checkpoint import read_meta

        meta = read_meta(ckpt)
        cfg = model.config
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        check_checkpoint(meta, attn.lola, origin=attn.origin, allow=allow, ckpt=ckpt, heads=heads, head_dim=head_dim)
    patch_model(model, attn.lola, attn.kernels)
    info = {"mode": attn.mode, "checkpoint": None}
    if ckpt:
        from .checkpoint_load import load_lola_checkpoint

        info["checkpoint"] = load_lola_checkpoint(model, ckpt)
    return info


@contextlib.contextmanager
def attention_variant(model, attn: AttentionSettings, ckpt: str | None = None):
    """``with attention_variant(model, attn, ckpt) as used: ...`` runs the body under ``attn`` and restores full
    attention afterwards, whatever happens. ``used()`` names the implementation that computed LoLA so far."""
    apply_attention(model, attn, ckpt)
    try:
        yield lambda: implementation_used(model) if is_patched(model) else None
    finally:
        apply_attention(model, FULL)
