"""Scorers: which evicted (k, v) pairs are worth keeping in the sparse cache. Higher score = keep.

Every scorer sees the same candidates (cached pairs + pairs leaving the window) and the current
linear state, and returns one score per candidate and storage head, shape (B, Hs, n).
In grouped GQA mode the storage head is the KV head and per-query-head scores are averaged
over the query heads of the group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError


@dataclass
class ScoreContext:
    k: torch.Tensor          # (B, Hs, n, d) candidate keys (post-RoPE)
    v: torch.Tensor          # (B, Hs, n, d) candidate values
    pos: torch.Tensor        # (B, Hs, n) absolute positions
    phi_k: torch.Tensor      # (B, Hq, n, F) feature-mapped keys (per query head)
    H: torch.Tensor          # (B, Hq, F, d) linear state before folding anything of this merge
    s: torch.Tensor          # (B, Hq, F)
    acc: torch.Tensor | None  # (B, Hs, n) accumulated attention mass (attention scorer only)
    group: int               # query heads per storage head (1 in expanded mode)
    eps: float
    seed: int


def group_mean(x: torch.Tensor, group: int) -> torch.Tensor:
    """(B, Hq, n) -> (B, Hq/group, n) mean over the query heads of each group."""
    if group == 1:
        return x
    b, h, n = x.shape
    return x.view(b, h // group, group, n).mean(dim=2)


def expand_heads(x: torch.Tensor, group: int) -> torch.Tensor:
    """(B, Hs, ...) -> (B, Hs*group, ...) repeating each storage head for its query heads."""
    return x if group == 1 else x.repeat_interleave(group, dim=1)


class Scorer:
    name = "base"
    needs_attention_mass = False

    def score(self, ctx: ScoreContext) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class SelfRecallError(Scorer):
    """SRE = || v - phi(k)^T H / (phi(k)^T s + eps) ||_2: how badly the linear state would recall v from k."""

    name = "sre"

    def score(self, ctx):
        num = torch.einsum("bhnf,bhfd->bhnd", ctx.phi_k, ctx.H)
        den = torch.einsum("bhnf,bhf->bhn", ctx.phi_k, ctx.s).unsqueeze(-1) + ctx.eps
        err = (expand_heads(ctx.v, ctx.group) - num / den).norm(dim=-1)
        return group_mean(err, ctx.group)


class RandomScore(Scorer):
    """A fixed pseudo-random score per (position, head): reproducible and cadence-independent."""

    name = "random"

    def score(self, ctx):
        b, h, n = ctx.pos.shape
        head = torch.arange(h, device=ctx.pos.device, dtype=torch.float64).view(1, h, 1)
        x = torch.sin(ctx.pos.double() * 12.9898 + head * 78.233 + ctx.seed * 37.719) * 43758.5453
        return (x - torch.floor(x)).to(ctx.k.dtype)


class KeyNorm(Scorer):
    name = "key_norm"

    def score(self, ctx):
        return ctx.k.norm(dim=-1)


class AttentionMass(Scorer):
    """Accumulated softmax attention each key has received so far (H2O-style heavy hitters)."""

    name = "attention"
    needs_attention_mass = True

    def score(self, ctx):
        return ctx.acc


class Recency(Scorer):
    """Keep the most recent evicted tokens: LoLA with this scorer is a larger sliding window."""

    name = "recency"

    def score(self, ctx):
        return ctx.pos.to(ctx.k.dtype)


class Sink(Scorer):
    """Keep the first tokens (attention sinks, StreamingLLM-style)."""

    name = "sink"

    def score(self, ctx):
        return -ctx.pos.to(ctx.k.dtype)


_SCORERS = {c.name: c for c in (SelfRecallError, RandomScore, KeyNorm, AttentionMass, Recency, Sink)}


def make_scorer(name: str) -> Scorer:
    if name not in _SCORERS:
        raise UserError(f"unknown scorer {name!r}: choose one of {', '.join(_SCORERS)}")
    return _SCORERS[name]()
