"""Put a loaded model into one attention variant (full / base / lola), loading a linearization checkpoint."""

from __future__ import annotations

from ..settings import AttentionSettings
from .patch import is_patched, patch_model, unpatch_model


def apply_attention(model, attn: AttentionSettings, ckpt: str | None = None) -> dict:
    """Patch (or unpatch) ``model`` in place for ``attn``. Returns a description of what ran (for config.json)."""
    if attn.mode == "full":
        if is_patched(model):
            unpatch_model(model)
        return {"mode": "full", "checkpoint": None}
    patch_model(model, attn.lola)
    info = {"mode": attn.mode, "checkpoint": None}
    if ckpt:
        from .checkpoint import load_lola_checkpoint

        info["checkpoint"] = load_lola_checkpoint(model, ckpt)
    return info
