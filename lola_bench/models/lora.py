"""LoRA on the attention projections (LoLCATs stage 2), stored as a standard peft adapter directory.

The adapter is injected in place (``peft.inject_adapter_in_model``), so the model keeps its class and
``lola_modules`` still finds the LolaAttention layers. The adapter lives on the LolaAttention's q/k/v/o
projections: ``unpatch_model`` (or re-patching) returns to the plain base projections.

Adapter directory: adapter_config.json + adapter_model.safetensors with peft's usual key names
(``base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight``), so ``peft.PeftModel.from_pretrained``
can read it too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import UserError

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


def lora_config(rank: int, alpha: float | None = None, targets=TARGETS, base_model: str | None = None):
    """LoLCATs' choice: rank r, alpha 2r, no dropout, on q/k/v/o."""
    from peft import LoraConfig

    if rank <= 0:
        raise UserError(f"LoRA rank must be positive, got {rank}")
    return LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else 2 * rank, lora_dropout=0.0,
                      target_modules=list(targets), bias="none", task_type="CAUSAL_LM",
                      base_model_name_or_path=base_model)


def _lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]


def has_lora(model) -> bool:
    return bool(_lora_layers(model))


def remove_lora(model) -> None:
    """Replace every LoRA-wrapped layer by its base layer (drops the adapter)."""
    for name, m in _lora_layers(model):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, m.get_base_layer())


def add_lora(model, config) -> None:
    """Inject a fresh adapter (replacing any existing one). Only the LoRA matrices are trainable afterwards."""
    from peft import inject_adapter_in_model

    remove_lora(model)
    for p in model.parameters():
        p.requires_grad_(False)
    inject_adapter_in_model(config, model)
    model._lola_lora_config = config
    for _, p in lora_parameters(model).items():
        p.requires_grad_(True)


def lora_parameters(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if ".lora_" in n}


def lora_state_dict(model) -> dict[str, torch.Tensor]:
    """LoRA weights under peft's adapter-file names (``base_model.model.`` + module path, no adapter name)."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, save_embedding_layers=False)
    return {PEFT_PREFIX + k: v.detach().float().cpu().contiguous() for k, v in state.items()}


def save_adapter(model, adapter_dir: str | os.PathLike) -> Path:
    """Write adapter_config.json + adapter_model.safetensors (atomically per file)."""
    from safetensors.torch import save_file

    config = getattr(model, "_lola_lora_config", None)
    if config is None or not has_lora(model):
        raise UserError("the model has no LoRA adapter to save")
    d = Path(adapter_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / (ADAPTER_WEIGHTS + ".tmp")
    save_file(lora_state_dict(model), str(tmp), metadata={"format": "pt"})
    tmp.replace(d / ADAPTER_WEIGHTS)
    cfg = config.to_dict()
    cfg = {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.items()}
    from ..records import atomic_write_json

    atomic_write_json(d / ADAPTER_CONFIG, cfg)
    return d


def _load_adapter_weights(d: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    st, binf = d / ADAPTER_WEIGHTS, d / "adapter_model.bin"
    try:
        if st.is_file():
            return load_file(str(st))
        if binf.is_file():
            return torch.load(str(binf), map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, OSError, ValueError) as e:
        raise UserError(f"corrupt LoRA adapter in {d}: {str(e).splitlines()[0]}") from None
    raise UserError(f"LoRA adapter directory {d} has no {ADAPTER_WEIGHTS}")


def attach_lora(model, adapter_dir: str | os.PathLike):
    """Inject the peft adapter saved in ``adapter_dir`` into ``model`` (in place) and load its weights."""
    from peft import LoraConfig, set_peft_model_state_dict

    d = Path(adapter_dir)
    if not (d / ADAPTER_CONFIG).is_file():
        raise UserError(f"not a LoRA adapter directory: {d} has no {ADAPTER_CONFIG}")
    try:
        raw = json.loads((d / ADAPTER_CONFIG).read_text())
        config = LoraConfig(**{k: v for k, v in raw.items() if k in LoraConfig.__dataclass_fields__})
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise UserError(f"corrupt LoRA adapter config {d / ADAPTER_CONFIG}: {e}") from None
    state = _load_adapter_weights(d)
    state = {k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k: v for k, v in state.items()}
    state = {k.replace(".default.", "."): v for k, v in state.items()}
    add_lora(model, config)
    expected = {n.replace(".default.", ".") for n in lora_parameters(model)}
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        remove_lora(model)
        what = f"missing {sorted(missing)[0]}" if missing else f"unexpected {sorted(unexpected)[0]}"
        raise UserError(f"LoRA adapter {d} does not fit this model ({what}; {len(missing)} missing, "
                        f"{len(unexpected)} unexpected)")
    try:
        set_peft_model_state_dict(model, state)
    except RuntimeError as e:
        remove_lora(model)
        raise UserError(f"LoRA adapter {d} does not fit this model: {str(e).splitlines()[0]}") from None
    for p in lora_parameters(model).values():
        p.requires_grad_(False)
    return config
