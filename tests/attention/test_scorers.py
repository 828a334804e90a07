"""Scorer formulas checked against a direct per-head loop: SRE and its relative variant (an ablation)."""

from __future__ import annotations

import pytest
import torch

from lola_bench.attention.scorers import ScoreContext, make_scorer
from lola_bench.attention.testing import random_score_context


def _ctx(group: int, scale: float = 1.0) -> ScoreContext:
    return random_score_context(group, scale=scale)


def _loop(ctx: ScoreContext, relative: bool) -> torch.Tensor:
    b, hs, n, _ = ctx.v.shape
    out = torch.zeros(b, hs, n, dtype=torch.float64)
    for h in range(hs):
        for j in range(n):
            errs = []
            for qh in range(h * ctx.group, (h + 1) * ctx.group):
                recall = ctx.phi_k[0, qh, j] @ ctx.H[0, qh] / (ctx.phi_k[0, qh, j] @ ctx.s[0, qh] + ctx.eps)
                e = (ctx.v[0, h, j] - recall).norm()
                errs.append(e / (ctx.v[0, h, j].norm() + ctx.eps) if relative else e)
            out[0, h, j] = sum(errs) / len(errs)
    return out


@pytest.mark.parametrize("group", [1, 3])
@pytest.mark.parametrize("name,relative", [("sre", False), ("sre_relative", True)])
def test_formula_matches_a_loop(group, name, relative):
    """SRE = || v - phi(k)^T H / (phi(k)^T s + eps) ||, per query head against its storage head's v, averaged over
    the query heads of a storage head; the relative variant divides each error by || v ||."""
    ctx = _ctx(group)
    torch.testing.assert_close(make_scorer(name).score(ctx), _loop(ctx, relative))


@pytest.mark.parametrize("name", ["sre", "sre_relative"])
def test_transposed_state_gives_the_same_scores(name):
    """The selection pass hands SRE [H | s]^T and v^T instead of H, s and v: the same scores."""
    from lola_bench.attention.selection import lin_from

    ctx = _ctx(3)
    fast = ScoreContext(k=ctx.k, v=ctx.v * float("nan"), pos=ctx.pos, phi_k=ctx.phi_k, H=None, s=None, acc=None,
                        group=3, eps=ctx.eps, seed=0, lin_t=lin_from(ctx.H, ctx.s),
                        v_t=ctx.v.transpose(-1, -2).contiguous())
    torch.testing.assert_close(make_scorer(name).score(fast), make_scorer(name).score(ctx), rtol=1e-13, atol=1e-13)


def test_relative_sre_ignores_the_scale_of_the_values():
    a, b = _ctx(3, 1.0), _ctx(3, 10.0)
    torch.testing.assert_close(make_scorer("sre_relative").score(b), make_scorer("sre_relative").score(a))
    torch.testing.assert_close(make_scorer("sre").score(b), 10 * make_scorer("sre").score(a))


def test_relative_sre_is_refused_for_eviction():
    from lola_bench.attention.config import LolaConfig
    from lola_bench.errors import UserError

    with pytest.raises(UserError, match="sre_relative"):
        LolaConfig(fold=False, scorer="sre_relative")
