"""Shared plumbing for commands that write a run directory: build settings, default paths, config.json."""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path

from .attention.config import LolaConfig
from .errors import UserError
from .paths import results_dir
from .provenance import provenance
from .settings import ATTN_MODES, AttentionSettings, ModelSettings


def default_run_dir(command: str, model: str) -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model)
    return results_dir() / command / f"{safe}-{stamp}"


def attention_variants(modes: list[str], lola: LolaConfig) -> list[AttentionSettings]:
    for m in modes:
        if m not in ATTN_MODES:
            raise UserError(f"unknown --attn {m!r}: choose full, base or lola")
    return [AttentionSettings.build(m, lola) for m in dict.fromkeys(modes)]


def run_config(command: str, model: ModelSettings, loaded, variants, extra: dict) -> dict:
    return {
        "command": command,
        "model": {**model.to_dict(), "source": loaded.source, "kind": loaded.kind, "resolved_device": loaded.device,
                  "resolved_dtype": loaded.dtype, "max_context": loaded.max_context},
        "attention": [v.to_dict() for v in variants],
        **extra,
        "provenance": provenance(loaded.device),
    }
