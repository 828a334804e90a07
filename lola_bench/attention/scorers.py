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
    phi_k: torch.Tensor | None  # (B, Hq, n, F) feature-mapped keys (per query head); None under eviction
    H: torch.Tensor | None   # (B, Hq, F, d) linear state before folding anything of this merge; None under eviction
    s: torch.Tensor | None   # (B, Hq, F)
    acc: torch.Tensor | None  # (B, Hs, n) attention mass received (attention and snapkv scorers only)
    group: int               # query heads per storage head (1 in expanded mode)
    eps: float
    seed: int
    lin_t: torch.Tensor | None = None  # (B, Hq, d+1, F) [H | s]^T, when the caller keeps the state so (SRE reads it)
    v_t: torch.Tensor | None = None    # (B, Hs, d, n) the values transposed, when the caller has them so


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
    needs_attention_mass = False   # the paths track the softmax mass each cached / window key receives (ctx.acc)
    mass_per_chunk = False         # ... and reset it at every chunk boundary (mass from the last chunk's queries only)

    def score(self, ctx: ScoreContext) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class SelfRecallError(Scorer):
    """SRE = || v - phi(k)^T H / (phi(k)^T s + eps) ||_2: how badly the linear state would recall v from k."""

    name = "sre"

    def score(self, ctx):
        # one matmul over phi for numerator and denominator, laid out (d+1, n): the division and the error norm then
        # run along the contiguous candidate axis (a per-row broadcast along d is several times slower on CPU)
        hs_t = ctx.lin_t
        if hs_t is None:
            hs_t = torch.cat([ctx.H, ctx.s.unsqueeze(-1)], dim=-1).transpose(-1, -2)       # (B, Hq, d+1, F)
        v_t = ctx.v_t if ctx.v_t is not None else ctx.v.transpose(-1, -2)
        num_den = torch.matmul(hs_t, ctx.phi_k.transpose(-1, -2))                           # (B, Hq, d+1, n)
        b, hq, d1, n = num_den.shape
        inv_den = num_den[:, :, -1:].add(ctx.eps).reciprocal_()                              # (B, Hq, 1, n)
        # v - num / den, in one pass; the query heads of a storage head are contiguous: v broadcasts over them
        hs, g = hq // ctx.group, ctx.group
        err = torch.addcmul(v_t.unsqueeze(2), num_den[:, :, :-1].view(b, hs, g, d1 - 1, n),
                            inv_den.view(b, hs, g, 1, n), value=-1)
        return err.mul_(err).sum(dim=3).sqrt_().mean(dim=2)


class RelativeSelfRecallError(SelfRecallError):
    """SRE relative to the value's size: || v - phi(k)^T H / (phi(k)^T s + eps) || / (|| v || + eps), per query head,
    averaged over the query heads of a storage head. An ablation (not the authors' formula): plain SRE favours pairs
    with large values, whatever their content; the relative error asks only how badly the state recalls this one.
    Scaling every value (and so H) by c leaves it unchanged, where SRE scales by c."""

    name = "sre_relative"

    def score(self, ctx):
        # ||v|| is the storage head's, the same for every query head of its group: dividing the group mean of the
        # errors is the group mean of the relative errors
        v_norm = ctx.v_t.norm(dim=-2) if ctx.v_t is not None else ctx.v.norm(dim=-1)
        return super().score(ctx).div_(v_norm + ctx.eps)


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
    """Accumulated softmax attention each key has received so far (heavy hitters). At chunk boundaries while the
    prompt is read (``evict_at = boundary``) the mass comes from queries that saw the window and sparse cache only
    ("H2O-style"); with ``evict_at = prompt_end`` the prompt's mass is that of full attention over every prompt
    query, paid before the one compression (H2O as kvpress runs it); nothing is evicted after it, so decoding tracks
    no mass (boundary mode keeps adding decode queries' mass and selects at every chunk boundary)."""

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


class SnapKV(Scorer):
    """SnapKV selection: the softmax mass each candidate received from the queries of an observation window, summed
    over those queries and averaged over the query heads of a storage head (grouped GQA; per query head in expanded
    mode), then average-pooled over ``kernel`` neighbouring candidates (in position order, stride 1, zero padding
    kernel // 2 counted in the mean) so that the neighbours of a hit stay too: SnapKV's published default
    (``pooling='avgpool'``, ``kernel_size=5`` in its ``SnapKVCluster``; kvpress and PyramidKV pool the same way).

    SnapKV (Li et al. 2024) compresses the prompt once, after a full-attention prefill, by the attention of the
    prompt's last ``window`` queries onto every earlier key, pooled this way. ``evict_at = prompt_end`` does exactly
    that (``attention.prompt_end``): the mass is full-attention mass from the prompt's last ``window`` queries.
    ``evict_at = boundary`` ("SnapKV-style") selects at every chunk boundary instead (prefill and decode alike): the
    observation window is the chunk just before the boundary (the mass is reset at each boundary) and its softmax
    covers only what those queries saw (sparse cache + window); a pair dropped earlier cannot come back when the end
    of the prompt would have wanted it. Decoding: boundary mode selects at chunk boundaries with the mass of the last
    chunk's queries; prompt_end never evicts after its one compression (every generated token is kept, as in SnapKV's
    code)."""

    name = "snapkv"
    needs_attention_mass = True
    mass_per_chunk = True
    kernel = 5

    def score(self, ctx):
        b, h, n = ctx.acc.shape
        pooled = torch.nn.functional.avg_pool1d(ctx.acc.reshape(b * h, 1, n), self.kernel, stride=1,
                                                padding=self.kernel // 2, count_include_pad=True)
        return pooled.view(b, h, n)


_SCORERS = {c.name: c for c in (SelfRecallError, RelativeSelfRecallError, RandomScore, KeyNorm, AttentionMass, Recency,
                                Sink, SnapKV)}


def make_scorer(name: str) -> Scorer:
    if name not in _SCORERS:
        raise UserError(f"unknown scorer {name!r}: choose one of {', '.join(_SCORERS)}")
    return _SCORERS[name]()
