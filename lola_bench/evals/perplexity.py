"""Perplexity on held-out text for each attention variant (is the linearization sound?)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from ..distributed import world
from ..errors import UserError
from ..models.variants import attention_variant
from ..settings import implementation_columns, variant_columns


def perplexity(model, tokenizer, text_path, *, seq_len: int = 1024, max_tokens: int | None = None,
               progress=None) -> float:
    """Perplexity over non-overlapping ``seq_len`` windows of a text file (batch 1, no padding).

    Works for the plain model and a LoLA-patched one (run in eval mode: the inference path with its sparse
    cache). CRLF is normalized; the first token of every window is context only. ``progress(done, total)``.
    """
    path = Path(text_path)
    if not path.is_file():
        raise UserError(f"perplexity text not found: {text_path}")
    text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise UserError(f"{text_path} has fewer than 2 tokens")
    device = next(model.parameters()).device
    starts = [i for i in range(0, len(ids), seq_len) if len(ids) - i >= 2]
    w = world()                  # under accelerate launch: each process its share of the windows
    was_training = model.training
    model.eval()
    local = []
    try:
        with torch.no_grad():
            for n, i in enumerate(w.shard(starts), 1):
                x = torch.tensor([ids[i:i + seq_len]], device=device)
                logits = model(input_ids=x, use_cache=False).logits[0, :-1].float()
                local.append((F.cross_entropy(logits, x[0, 1:], reduction="sum").item(), x.shape[1] - 1))
                if progress is not None:
                    progress(n, len(starts) if not w.parallel else len(w.shard(starts)))
    finally:
        model.train(was_training)
    nll, count = 0.0, 0
    for window_nll, tokens in w.gather_shards(local):   # window order: the same sum as one process
        nll += window_nll
        count += tokens
    return math.exp(nll / count)


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
