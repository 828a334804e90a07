"""Feature maps phi for the linear-attention memory. Input (B, H, L, d) -> output (B, H, L, F).

hedgehog           LoLCATs form: per-head learnable W (d x f), phi(x) = [softmax(xW), softmax(-xW)], F = 2f;
                   f = d when built here (identity init), any f when loaded from a checkpoint (LoLCATs'
                   Llama-3.1-8B files: d = 128, f = 64)
hedgehog-identity  the same with W = I, training-free
elu                elu(x) + 1, F = d
relu               relu(x), F = d
taylor             2nd-order Taylor of exp(q.k/sqrt d) as in Based: [1, x/d^1/4, (x x^T)/(sqrt 2 sqrt d)], F = 1+d+d^2
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError


class FeatureMap(nn.Module):
    name = "base"

    def __init__(self, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim

    @property
    def feature_dim(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError


class Hedgehog(FeatureMap):
    """Per-head learnable projection (H, d, f) followed by the two-sided softmax (LoLCATs ``softmax_dim`` with
    ``fullspace``): phi dimension 2f. ``proj_dim`` f defaults to d with an identity init; any other f starts
    from zeros and is meant to be loaded from a checkpoint."""

    name = "hedgehog"

    def __init__(self, num_heads: int, head_dim: int, eps: float = 1e-12, learnable: bool = True,
                 proj_dim: int | None = None):
        super().__init__(num_heads, head_dim)
        f = head_dim if proj_dim is None else int(proj_dim)
        if f <= 0:
            raise UserError(f"hedgehog projection dim must be positive, got {f}")
        if f == head_dim:
            w = torch.eye(head_dim).unsqueeze(0).repeat(num_heads, 1, 1)
        else:
            w = torch.zeros(num_heads, head_dim, f)
        self.layer = nn.Parameter(w, requires_grad=learnable)  # (H, d, f)
        self.eps = eps

    @property
    def proj_dim(self) -> int:
        return self.layer.shape[-1]

    @property
    def feature_dim(self) -> int:
        return 2 * self.proj_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _two_sided_softmax(torch.matmul(x, self.layer.to(x.dtype)), self.eps)


class HedgehogIdentity(Hedgehog):
    name = "hedgehog-identity"

    def __init__(self, num_heads: int, head_dim: int, eps: float = 1e-12):
        super().__init__(num_heads, head_dim, eps=eps, learnable=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _two_sided_softmax(x, self.eps)


def _two_sided_softmax(h: torch.Tensor, eps: float) -> torch.Tensor:
    """[softmax(h), softmax(-h)] along the last dim, clamped below at eps: one softmax over the rows of [h | -h]
    (the same values as two softmaxes and a concatenation, with fewer passes over memory)."""
    hh = torch.cat([h, h.neg()], dim=-1)
    y = torch.softmax(hh.view(*h.shape[:-1], 2, h.shape[-1]), dim=-1)
    y = y.clamp(min=eps) if y.requires_grad else y.clamp_(min=eps)   # autograd keeps softmax's output
    return y.view(hh.shape)


class Elu(FeatureMap):
    name = "elu"

    @property
    def feature_dim(self) -> int:
        return self.head_dim

    def forward(self, x):
        return F.elu(x) + 1


class Relu(FeatureMap):
    name = "relu"

    @property
    def feature_dim(self) -> int:
        return self.head_dim

    def forward(self, x):
        return F.relu(x)


class Taylor(FeatureMap):
    name = "taylor"

    @property
    def feature_dim(self) -> int:
        return 1 + self.head_dim + self.head_dim ** 2

    def forward(self, x):
        d = self.head_dim
        x2 = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(start_dim=-2) / math.sqrt(2 * math.sqrt(d))
        return torch.cat([torch.ones_like(x[..., :1]), x / d ** 0.25, x2 / d ** 0.25], dim=-1)


_MAPS = {"hedgehog": Hedgehog, "hedgehog-identity": HedgehogIdentity, "elu": Elu, "relu": Relu, "taylor": Taylor}


def make_feature_map(name: str, num_heads: int, head_dim: int, proj_dim: int | None = None) -> FeatureMap:
    """``proj_dim``: the width f of a learned hedgehog projection (H, d, f), when it is not d (phi dim 2f)."""
    if name not in _MAPS:
        raise UserError(f"unknown feature map {name!r}: choose one of {', '.join(_MAPS)}")
    if proj_dim is None or proj_dim == head_dim:
        return _MAPS[name](num_heads, head_dim)
    if name != "hedgehog":
        raise UserError(f"feature map {name!r} has no projection: a projection dim {proj_dim} != head_dim "
                        f"{head_dim} needs the learned hedgehog map")
    return Hedgehog(num_heads, head_dim, proj_dim=proj_dim)
