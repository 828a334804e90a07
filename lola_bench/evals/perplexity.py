"""Perplexity on held-out text for each attention variant (is the linearization sound?)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pandas as pd

from ..models.linearize import perplexity
from ..models.variants import attention_variant
from ..settings import implementation_columns, variant_columns


@dataclass(frozen=True)
class PerplexitySettings:
    text: str
    seq_len: int = 1024
    max_tokens: int | None = None

    def to_dict(self) -> dict:
        return {"text": self.text, "seq_len": self.seq_len, "max_tokens": self.max_tokens}


def run_perplexity(loaded, variants, settings: PerplexitySettings, *, ckpt: str | None = None,
                   device_label: str = "cpu", progress=None) -> pd.DataFrame:
    """One row per variant: perplexity over non-overlapping ``seq_len`` windows. ``progress(advance, desc)``."""
    rows = []
    for v in variants:
        with attention_variant(loaded.model, v, ckpt) as used:
            value = perplexity(loaded.model, loaded.tokenizer, settings.text, seq_len=settings.seq_len,
                               max_tokens=settings.max_tokens)
            impl = used()
        rows.append({"model": loaded.spec, **variant_columns(v), "text": os.path.basename(settings.text),
                     "seq_len": settings.seq_len, "max_tokens": settings.max_tokens, "perplexity": value,
                     **implementation_columns(v, impl), "device": device_label})
        if progress:
            progress(1, f"{v.mode}: {value:.2f}")
    return pd.DataFrame(rows)
