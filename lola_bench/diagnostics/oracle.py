"""The needle oracle (``ruler --pin-needle``): keep a prompt's needle tokens exact in every LoLA layer and head.

An ablation, not a method: it needs the answer's position, which no real system knows. It separates the two ways LoLA
can lose a needle. If pinning the needle (so that every layer can read it with softmax when the question comes)
brings accuracy back to full attention's, the selection was at fault; if accuracy stays low, the readout is (the
exact needle is outweighed by the window and the linear memory).

How: each LoLA layer's scorer is wrapped for the duration of one generation so that a candidate whose position is a
needle token scores +inf, like the pinned attention sinks. Pinned tokens stay in the sparse cache from the boundary
where they leave the window on, and count inside lambda (the cache holds ``lambda`` pairs as always; the needle
displaces the lowest-scored ones). Every torch path (chunk loop, batched selection, decode) asks the scorer, so the
pin holds in all of them; the layers run the torch implementation while pinned (the Triton kernels score SRE inside
the kernel and cannot be told).
"""

from __future__ import annotations

import torch

from ..attention.scorers import ScoreContext, Scorer

PIN_SUFFIX = "+needle-pin"   # appended to the scorer column of rows and predictions that ran pinned


class PinnedScorer(Scorer):
    """``base``'s scores with the candidates at ``positions`` raised to +inf (always kept)."""

    def __init__(self, base: Scorer, positions):
        self.base = base
        self.name = base.name
        self.needs_attention_mass = base.needs_attention_mass
        self.mass_per_chunk = base.mass_per_chunk
        self.positions = sorted({int(p) for p in positions})

    def score(self, ctx: ScoreContext) -> torch.Tensor:
        scores = self.base.score(ctx)
        if not self.positions:
            return scores
        pinned = torch.isin(ctx.pos, torch.tensor(self.positions, device=ctx.pos.device, dtype=ctx.pos.dtype))
        return scores.masked_fill(pinned, float("inf"))


class PinNeedle:
    """``with PinNeedle(lola_modules(model), positions): generate(...)``: every module's scorer pinned to
    ``positions`` and its kernels set to torch; both restored on exit (also after an exception)."""

    def __init__(self, modules, positions):
        self.modules, self.positions = list(modules), sorted({int(p) for p in positions})
        self._saved: list = []

    def __enter__(self):
        self._saved = [(m, m.scorer, m.kernels) for m in self.modules]
        for m in self.modules:
            m.scorer = PinnedScorer(m.scorer, self.positions)
            m.kernels = "torch"
        return self

    def __exit__(self, *exc):
        for m, scorer, kernels in self._saved:
            m.scorer, m.kernels = scorer, kernels
        self._saved = []
        return False
