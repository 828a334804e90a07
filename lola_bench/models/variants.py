"""Put a loaded model into one attention variant (full / base / lola), loading a linearization checkpoint."""

from __future__ import annotations

import contextlib

from ..settings import FULL, AttentionSettings
from .patch import implementation_used, is_patched, patch_model, unpatch_model


def apply_attention(model, attn: AttentionSettings, ckpt: str | None = None) -> dict:
    """Patch (or unpatch) ``model`` in place for ``attn``. Returns a description of what ran (for config.json)."""
    if attn.mode == "full":
        if is_patched(model):
            unpatch_model(model)
        return {"mode": "full", "checkpoint": None}
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
