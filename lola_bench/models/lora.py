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
import re
from collections import Counter
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
    if "peft_config" in vars(model):  # set by inject_adapter_in_model; a later injection would warn about it
        del model.peft_config


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


def _read_adapter_config(f: Path):
    from peft import LoraConfig

    try:
        raw = json.loads(f.read_text())
        if not isinstance(raw, dict):
            raise ValueError(f"expected a JSON object, found a {type(raw).__name__}")
        return LoraConfig(**{k: v for k, v in raw.items() if k in LoraConfig.__dataclass_fields__})
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as e:
        raise UserError(f"corrupt LoRA adapter config {f}: {str(e).splitlines()[0]}") from None


def attach_lora(model, adapter_dir: str | os.PathLike):
    """Inject the peft adapter saved in ``adapter_dir`` into ``model`` (in place) and load its weights."""
    d = Path(adapter_dir)
    if not (d / ADAPTER_CONFIG).is_file():
        raise UserError(f"not a LoRA adapter directory: {d} has no {ADAPTER_CONFIG}")
    config = _read_adapter_config(d / ADAPTER_CONFIG)
    state = _load_adapter_weights(d)
    state = {k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k: v for k, v in state.items()}
    state = {k.replace(".default.", "."): v for k, v in state.items()}
    _inject_and_load(model, config, state, d)
    return config


def _inject_and_load(model, config, state: dict[str, torch.Tensor], d) -> None:
    """Inject ``config`` and load ``state`` (keys ``model.layers.{i}.<module>.lora_{A,B}.weight``); every key must
    find its parameter and every parameter its key, else the adapter is removed and a UserError names one."""
    from peft import set_peft_model_state_dict

    try:
        add_lora(model, config)
    except ValueError as e:  # peft: target modules not found in the model
        remove_lora(model)
        raise UserError(f"LoRA adapter {d} does not fit this model: {str(e).splitlines()[0]}") from None
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


# ---- LoRA weights inside a checkpoint file (LoLCATs' "ft-lora" files) ----------------------------------------------
_LORA_KEY = re.compile(r"^model\.layers\.(\d+)\.(?:[A-Za-z0-9_]+\.)*?([A-Za-z0-9_]+)\.lora_(A|B)\.weight$")
LOLCATS_ALPHA_RULE = "alpha = 2r (LoLCATs' choice; no adapter_config.json beside the file)"


def describe_lora_state(state: dict[str, torch.Tensor], files: list[Path]) -> dict:
    """Rank, alpha and targets of LoRA weights given as ``model.layers.{i}.<module>.lora_{A,B}.weight`` (what
    ``checkpoint.parse_checkpoint`` produces from peft's names). Rank: from the lora_A shapes (r, in). Targets: the
    module names in the keys. Alpha: from an adapter_config.json beside a file when there is one, else LoLCATs'
    choice 2r; ``alpha_rule`` says which applied."""
    ranks, targets, layers = Counter(), set(), set()
    for k, t in state.items():
        m = _LORA_KEY.match(k)
        if m is None:  # pragma: no cover - parse_checkpoint only produces matching names
            raise UserError(f"not a LoRA weight name: {k}")
        layers.add(int(m.group(1)))
        targets.add(m.group(2))
        if m.group(3) == "A":
            if t.dim() != 2:
                raise UserError(f"LoRA weight {k} in {', '.join(map(str, files))} has shape {tuple(t.shape)}; "
                                f"lora_A is (r, in)")
            ranks[t.shape[0]] += 1
        elif t.dim() != 2:
            raise UserError(f"LoRA weight {k} in {', '.join(map(str, files))} has shape {tuple(t.shape)}; "
                            f"lora_B is (out, r)")
    if not ranks:
        raise UserError(f"LoRA weights in {', '.join(map(str, files))} have lora_B but no lora_A entries")
    sibling = next((f.parent / ADAPTER_CONFIG for f in files if (f.parent / ADAPTER_CONFIG).is_file()), None)
    config = _read_adapter_config(sibling) if sibling is not None else None
    if len(ranks) > 1 and not (config is not None and config.rank_pattern):
        raise UserError(f"LoRA weights in {', '.join(map(str, files))} mix ranks {sorted(ranks)}: lola-bench needs "
                        f"one rank (or an {ADAPTER_CONFIG} with rank_pattern beside the file)")
    rank = ranks.most_common(1)[0][0]
    if config is not None:
        if not config.rank_pattern and config.r != rank:
            raise UserError(f"{sibling} says r={config.r}, but the LoRA weights beside it have rank {rank}")
        alpha, rule = config.lora_alpha, f"{ADAPTER_CONFIG} ({sibling})"
    else:
        alpha, rule = 2 * rank, LOLCATS_ALPHA_RULE
    return {"rank": rank, "alpha": alpha, "alpha_rule": rule, "targets": sorted(targets), "layers": len(layers),
            "files": [str(f) for f in files], "config": str(sibling) if sibling else None}


def attach_lora_state(model, state: dict[str, torch.Tensor], files: list[Path]) -> dict:
    """Attach LoRA weights found in checkpoint files (see ``describe_lora_state``) through peft. Every weight is
    attached or this raises: a key with no matching module, or a module with no weights, is a UserError."""
    info = describe_lora_state(state, files)
    if info["config"]:
        config = _read_adapter_config(Path(info["config"]))
    else:
        config = lora_config(info["rank"], info["alpha"], info["targets"])
    _inject_and_load(model, config, state, ", ".join(info["files"]))
    return info
