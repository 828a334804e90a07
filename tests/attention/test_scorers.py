"""Scorer formulas checked against a direct per-head loop: SRE and its relative variant (an ablation)."""

from __future__ import annotations

import pytest
import torch

from lola_bench.attention.scorers import ScoreContext, make_scorer


def _ctx(group: int, scale: float = 1.0, seed: int = 0) -> ScoreContext:
    g = torch.Generator().manual_seed(seed)
    b, hs, n, d, f = 1, 2, 7, 5, 6
    hq = hs * group
    phi = torch.rand(b, hq, n, f, generator=g, dtype=torch.float64)
    H = torch.randn(b, hq, f, d, generator=g, dtype=torch.float64) * scale
    s = torch.rand(b, hq, f, generator=g, dtype=torch.float64) + 0.5
    v = torch.randn(b, hs, n, d, generator=g, dtype=torch.float64) * scale
    k = torch.randn(b, hs, n, d, generator=g, dtype=torch.float64)
    pos = torch.arange(n).view(1, 1, n).expand(b, hs, n)
    return ScoreContext(k=k, v=v, pos=pos, phi_k=phi, H=H, s=s, acc=None, group=group, eps=1e-9, seed=0)


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
    ctx = _ctx(group)
    torch.testing.assert_close(make_scorer(name).score(ctx), _loop(ctx, relative))


def test_relative_sre_ignores_the_scale_of_the_values():
    a, b = _ctx(3, 1.0), _ctx(3, 10.0)
    torch.testing.assert_close(make_scorer("sre_relative").score(b), make_scorer("sre_relative").score(a))
    torch.testing.assert_close(make_scorer("sre").score(b), 10 * make_scorer("sre").score(a))


def test_relative_sre_is_refused_for_eviction():
    from lola_bench.attention.config import LolaConfig
    from lola_bench.errors import UserError

    with pytest.raises(UserError, match="sre_relative"):
        LolaConfig(fold=False, scorer="sre_relative")
