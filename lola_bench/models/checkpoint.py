"""LoLA linearization checkpoints: feature maps + window factors (+ optional LoRA), safetensors + JSON.

Layout of a checkpoint directory:
  lola.safetensors   model.layers.{i}.self_attn.{feature_map_q.layer, feature_map_k.layer, window_factors}
  lola.json          provenance: base model, feature map, shapes, data, tokens, steps, losses, git commit
  adapter/           optional peft LoRA adapter
LoLCATs-format state dicts (HazyResearch's published attention-transfer checkpoints) are mapped onto
these names by ``map_lolcats_names``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..errors import UserError
from ..paths import PACKAGE_DIR

SHIPPED = {"smollm2-135m": PACKAGE_DIR / "data" / "smollm2-135m-lola"}
WEIGHTS, META = "lola.safetensors", "lola.json"

_LOLCATS = re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn\.(feature_map_q|feature_map_k|window_factors)"
                      r"(?:\.mlp)?(?:\.(layer))?$")


def shipped_checkpoint(spec: str) -> Path | None:
    p = SHIPPED.get(spec)
    return p if p is not None and (p / WEIGHTS).is_file() else None


def resolve_checkpoint(model_settings, feature_map: str | None) -> tuple[str | None, str]:
    """Pick the checkpoint and the feature map: an explicit --lola-ckpt wins; the embedded model gets its shipped
    checkpoint unless 'none' or a training-free feature map is asked for."""
    ck = model_settings.lola_ckpt
    if ck and ck.lower() == "none":
        return None, feature_map or "hedgehog-identity"
    if ck:
        meta = read_meta(ck)
        fm = meta.get("feature_map", "hedgehog")
        if feature_map and feature_map != fm:
            raise UserError(f"--feature-map {feature_map} does not match the checkpoint's feature map {fm}")
        return ck, fm
    shipped = shipped_checkpoint(model_settings.spec)
    if shipped and feature_map in (None, "hedgehog"):
        return str(shipped), "hedgehog"
    if feature_map == "hedgehog":
        raise UserError("--feature-map hedgehog needs a linearization checkpoint (--lola-ckpt PATH; make one with "
                        "`lola-bench linearize`), or use a training-free map: hedgehog-identity, elu, relu, taylor")
    return None, feature_map or "hedgehog-identity"


def read_meta(path: str | Path) -> dict:
    p = Path(path)
    if not (p / WEIGHTS).is_file():
        raise UserError(f"not a LoLA checkpoint: {p} has no {WEIGHTS}")
    try:
        return json.loads((p / META).read_text()) if (p / META).is_file() else {}
    except json.JSONDecodeError as e:
        raise UserError(f"corrupt checkpoint metadata {p / META}: {e}") from None


def map_lolcats_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LoLCATs names (``...layers.3.self_attn.feature_map_q.mlp.layer``, window_factors of shape (1,H,1,1),
    any ``base_model.model.`` prefix) -> ours. Unrelated keys (LoRA, base weights) are dropped."""
    out = {}
    for name, t in state.items():
        m = _LOLCATS.search(name)
        if not m:
            continue
        layer, what = int(m.group(1)), m.group(2)
        if what == "window_factors":
            out[f"model.layers.{layer}.self_attn.window_factors"] = t.reshape(-1)
        else:
            out[f"model.layers.{layer}.self_attn.{what}.layer"] = t
    return out


def is_lolcats_format(state: dict[str, torch.Tensor]) -> bool:
    """LoLCATs files carry a peft prefix, ``.mlp.layer`` feature maps, or (1, H, 1, 1) window factors."""
    return any(k.startswith("base_model.") or ".mlp.layer" in k or (k.endswith("window_factors") and t.dim() > 1)
               for k, t in state.items())


def lola_state_dict(model) -> dict[str, torch.Tensor]:
    from .patch import lola_modules

    out = {}
    for i, m in enumerate(lola_modules(model)):
        pre = f"model.layers.{i}.self_attn."
        out[pre + "window_factors"] = m.window_factors.detach().float().cpu().contiguous()
        for name in ("feature_map_q", "feature_map_k"):
            layer = getattr(getattr(m, name), "layer", None)
            if layer is not None:
                out[pre + name + ".layer"] = layer.detach().float().cpu().contiguous()
    return out


def save_lola_checkpoint(model, path: str | Path, meta: dict) -> Path:
    from safetensors.torch import save_file

    from ..records import atomic_write_json

    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    tmp = p / (WEIGHTS + ".tmp")
    save_file(lola_state_dict(model), str(tmp))
    tmp.replace(p / WEIGHTS)
    atomic_write_json(p / META, meta)
    return p


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    f = p / WEIGHTS if p.is_dir() else p
    if not f.is_file():
        raise UserError(f"LoLA checkpoint not found: {path}")
    try:
        if f.suffix == ".safetensors":
            state = load_file(str(f))
        else:
            state = torch.load(str(f), map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, OSError, ValueError) as e:
        raise UserError(f"corrupt LoLA checkpoint {f}: {str(e).splitlines()[0]}") from None
    if is_lolcats_format(state):
        state = map_lolcats_names(state)
    return state


def load_lola_checkpoint(model, path: str | Path) -> dict:
    """Load feature maps / window factors (and LoRA if present) into a patched model. Returns its metadata."""
    from .patch import lola_modules

    state = load_state(path)
    mods = lola_modules(model)
    if not mods:
        raise UserError("load a LoLA checkpoint into a patched model (attention lola/base)")
    for i, m in enumerate(mods):
        pre = f"model.layers.{i}.self_attn."
        wf = state.get(pre + "window_factors")
        if wf is None:
            raise UserError(f"checkpoint {path} has no entry for layer {i} (model has {len(mods)} layers)")
        if wf.numel() != m.window_factors.numel():
            raise UserError(f"checkpoint {path} has {wf.numel()} heads in layer {i}, the model has "
                            f"{m.window_factors.numel()}")
        m.window_factors.data.copy_(wf.reshape(-1))
        for name in ("feature_map_q", "feature_map_k"):
            t = state.get(pre + name + ".layer")
            fm = getattr(m, name)
            target = getattr(fm, "layer", None)
            if t is None or target is None:
                continue
            if t.shape != target.shape:
                raise UserError(f"checkpoint {path}: {name} in layer {i} has shape {tuple(t.shape)}, the model "
                                f"needs {tuple(target.shape)} (head_dim mismatch?)")
            target.data.copy_(t)
    extra = sorted({k.split(".")[0] for k in state} - {"model"})
    if extra:
        raise UserError(f"checkpoint {path} has unexpected entries: {', '.join(extra)}")
    meta = read_meta(path) if Path(path).is_dir() else {}
    adapter = Path(path) / "adapter" if Path(path).is_dir() else None
    if adapter is not None and adapter.is_dir():
        from .lora import attach_lora

        attach_lora(model, adapter)
        meta = {**meta, "lora": str(adapter)}
    return {"path": str(path), **{k: meta.get(k) for k in ("base_model", "feature_map", "tokens", "steps")}}
