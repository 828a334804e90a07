"""Writing lola-bench's own checkpoint format: a LoLA-patched model's learned tensors (feature-map projections and
window factors, under ``model.layers.{i}.self_attn.*`` names, float32 on the CPU) to ``lola.safetensors`` and the
run's metadata to ``lola.json``, both replaced atomically. Reading any checkpoint back is ``checkpoint.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import META, WEIGHTS


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
