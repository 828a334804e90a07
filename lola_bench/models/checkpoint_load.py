"""Loading a checkpoint into a LoLA-patched model: checks that its layers, heads and feature-map shapes fit the
model (one-line errors naming expected vs found), copies window factors and hedgehog projections in (rebuilding a
feature map whose width differs), and attaches the LoRA weights or adapter it carries (the glue to ``lora.py``).
Finding and parsing the files is ``checkpoint.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import UserError
from .checkpoint import Parsed, parse_checkpoint, read_meta


def _check_fits(p: Parsed, mods, spec) -> None:
    """One line naming expected vs found when the checkpoint does not fit the patched model."""
    m0 = mods[0]
    n, h, d = len(mods), m0.num_heads, m0.head_dim
    layers = sorted(set(p.factors) | {i for i, _ in p.fmaps})
    if layers != list(range(n)):
        found = f"{len(layers)} layers ({layers[0]}..{layers[-1]})" if layers else "no layers"
        raise UserError(f"checkpoint {spec} does not fit the model: expected {n} layers (0..{n - 1}), found {found}")
    for i in range(n):
        got = {w: p.fmaps.get((i, w)) for w in ("feature_map_q", "feature_map_k")}
        if (got["feature_map_q"] is None) != (got["feature_map_k"] is None):
            missing = "feature_map_q" if got["feature_map_q"] is None else "feature_map_k"
            raise UserError(f"checkpoint {spec} has no {missing} for layer {i} (it has the other one)")
        for w, t in got.items():
            if t is None:
                continue
            if t.dim() != 3 or t.shape[0] != h or t.shape[1] != d:
                raise UserError(f"checkpoint {spec} does not fit the model: {w} of layer {i} is {tuple(t.shape)}, "
                                f"expected ({h}, {d}, f) = (heads, head_dim, f)")
        q, k = got["feature_map_q"], got["feature_map_k"]
        if q is not None and q.shape != k.shape:
            raise UserError(f"checkpoint {spec}: feature_map_q of layer {i} is {tuple(q.shape)} but feature_map_k is "
                            f"{tuple(k.shape)} (the feature dim must match between q and k)")
        wf = p.factors.get(i)
        if wf is None:
            raise UserError(f"checkpoint {spec} has no window_factors for layer {i} (model has {n} layers)")
        if wf.numel() != h:
            raise UserError(f"checkpoint {spec} does not fit the model: window_factors of layer {i} have "
                            f"{wf.numel()} heads, expected {h} heads")


def _set_feature_map(m, name: str, t: torch.Tensor) -> None:
    """Copy a (H, d, f) hedgehog projection in, rebuilding the map when f differs from the one it was built with."""
    from ..attention.feature_maps import make_feature_map

    fm = getattr(m, name)
    target = getattr(fm, "layer", None)
    if target is None:
        raise UserError(f"the checkpoint has learned hedgehog feature maps, but the model was patched with feature "
                        f"map {m.cfg.feature_map!r}: use feature_map='hedgehog'")
    if target.shape != t.shape:
        new = make_feature_map(m.cfg.feature_map, t.shape[0], t.shape[1], proj_dim=t.shape[2])
        new = new.to(device=target.device, dtype=target.dtype)
        new.layer.requires_grad_(target.requires_grad)
        setattr(m, name, new)
        target = new.layer
    target.data.copy_(t)


def load_lola_checkpoint(model, path: str | os.PathLike) -> dict:
    """Load feature maps / window factors, and LoRA if the checkpoint has any, into a patched model. Returns what
    was loaded (the ``read_meta`` fields that describe the run)."""
    from .patch import lola_modules

    mods = lola_modules(model)
    if not mods:
        raise UserError("load a LoLA checkpoint into a patched model (attention lola/base)")
    meta = read_meta(path)
    p = parse_checkpoint(path)
    _check_fits(p, mods, path)
    for i, m in enumerate(mods):
        m.window_factors.data.copy_(p.factors[i].to(m.window_factors.dtype))
        for name in ("feature_map_q", "feature_map_k"):
            t = p.fmaps.get((i, name))
            if t is not None:
                _set_feature_map(m, name, t)
    if p.lora:
        from .lora import attach_lora_state

        meta["lora"] = attach_lora_state(model, p.lora, [Path(f) for f in p.lora_files])
    else:
        adapters = [d / "adapter" for d in p.dirs if (d / "adapter").is_dir()]
        if adapters:
            from .lora import attach_lora

            attach_lora(model, adapters[-1])
    keys = ("format", "files", "base_model", "feature_map", "trained_combine", "layers", "heads", "head_dim",
            "feature_dim", "phi_dim", "tokens", "steps", "step", "wrapped", "replaced_entries", "lora")
    return {"path": str(path), **{k: meta.get(k) for k in keys}}
