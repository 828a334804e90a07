"""lola-bench against golden outputs of the authors' own code (tests/fixtures/authors, scripts/authors_golden.py).

The fixtures hold float64 inputs (q, k, v after RoPE), hedgehog weights (H, d, F), raw window-factor logits, the
outputs of the LoLA authors' ``linear_window_attention_sw_sparse.py`` (prompt in one prefill call, then one decode
call per token) or of LoLCATs' ``hybrid_attention_quadratic`` (λ = 0), and, for LoLA, the sparse-cache positions
that the queries of every chunk attend to. Provenance: tests/fixtures/authors/PROVENANCE.json.

Settings that reproduce them:
  LoLA:            --preset paper (combine='lola', gqa='expanded', chunk = η, sinks 0), the factors as stored
  LoLCATs (tk):    combine='lolcats', chunk = window = η, sparse 0
  LoLCATs (sw):    combine='lolcats', chunk = 1, window = η - 1 (their window of η keys includes the query)
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from lola_bench.attention.chunked import lola_chunked
from lola_bench.attention.common import LolaParams
from lola_bench.attention.config import LolaConfig
from lola_bench.attention.decode import lola_decode
from lola_bench.attention.feature_maps import Hedgehog
from lola_bench.attention.reference import lola_reference
from lola_bench.attention.scorers import make_scorer
from lola_bench.attention.state import LolaState
from lola_bench.settings import LolaFlags, lola_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "authors"
TOL = 1e-5


def _load():
    return torch.load(FIXTURES / "authors_fixtures.pt", weights_only=True)["configs"]


CONFIGS = _load()


class _RectHedgehog(Hedgehog):
    """Hedgehog with the published (H, d, F) weights, F != d allowed (phi dim 2F).
    TODO(issue 15): use the library's own hedgehog once it accepts (H, d, F) checkpoints."""

    def __init__(self, w: torch.Tensor):
        super().__init__(w.shape[0], w.shape[1], learnable=False)
        self.layer = nn.Parameter(w.clone(), requires_grad=False)

    @property
    def feature_dim(self) -> int:
        return 2 * self.layer.shape[-1]


def _params(fx: dict) -> LolaParams:
    eta, factors = fx["eta"], fx["window_factors"].reshape(-1)
    if fx["module"] == "lola":  # exactly what `--preset paper --window eta --lambda lam` resolves to
        cfg = lola_config(LolaFlags(window=eta, sparse=fx["lam"], scorer="sre", preset="paper"), "hedgehog", None)
        assert (cfg.combine, cfg.gqa, cfg.chunk_size, cfg.sinks) == ("lola", "expanded", eta, 0)
    elif fx["module"] == "lolcats_tk":
        cfg = LolaConfig(window=eta, sparse=0, chunk=eta, combine="lolcats", feature_map="hedgehog", gqa="expanded")
    else:
        cfg = LolaConfig(window=eta - 1, sparse=0, chunk=1, combine="lolcats", feature_map="hedgehog", gqa="expanded")
    cfg = replace(cfg, eps=fx["eps"])
    hq, hkv, d = fx["q"].shape[1], fx["k"].shape[1], fx["q"].shape[3]
    return LolaParams(cfg, _RectHedgehog(fx["fmap_q"]), _RectHedgehog(fx["fmap_k"]), factors, make_scorer("sre"),
                      hq, hkv, d)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1)).max())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fast_path_matches_authors(name):
    """Chunked prefill of the prompt (read per chunk) then one decode call per token, as the authors ran it."""
    fx = CONFIGS[name]
    params = _params(fx)
    C = params.cfg.chunk_size
    q, k, v = fx["q"], fx["k"], fx["v"]
    L, T = fx["prefill_len"], q.shape[2]
    state, outs, seen = LolaState(), [], {}
    t = 0
    while t < L:
        e = min(L, (t // C + 1) * C)
        outs.append(lola_chunked(q[:, :, t:e], k[:, :, t:e], v[:, :, t:e], state, params))
        seen[t // C] = state.sp_pos.clone()
        t = e
    for t in range(L, T):
        outs.append(lola_decode(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], state, params))
        seen[t // C] = state.sp_pos.clone()
    out = torch.cat(outs, dim=2)
    assert _rel(out, fx["out"]) <= TOL
    if fx["module"] == "lola":
        ref = fx["sparse_pos"]
        assert len(ref) == len(seen)
        for j, want in enumerate(ref):
            assert torch.equal(seen[j], want), f"chunk {j}: sparse positions differ"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_reference_matches_authors_on_prompt(name):
    fx = CONFIGS[name]
    L = fx["prefill_len"]
    r = lola_reference(fx["q"][:, :, :L], fx["k"][:, :, :L], fx["v"][:, :, :L], _params(fx))
    assert _rel(r.out, fx["out"][:, :, :L]) <= TOL
    if fx["module"] == "lola":
        assert torch.equal(r.sparse_pos, fx["sparse_pos"][(L - 1) // fx["eta"]])


def test_fixtures_cover_the_issue_cases_and_have_provenance():
    lola = [fx for fx in CONFIGS.values() if fx["module"] == "lola"]
    assert any(0 < fx["lam"] < fx["eta"] for fx in lola)                          # λ < η
    assert any(fx["lam"] > fx["eta"] and fx["lam"] % fx["eta"] for fx in lola)    # λ not a multiple of η
    assert any(fx["k"].shape[1] < fx["q"].shape[1] and fx["lam"] for fx in lola)  # GQA
    assert any(fx["lam"] == 0 for fx in lola)                                     # λ = 0 (their G = 0 branch)
    assert {"lolcats_sw", "lolcats_tk"} <= {fx["module"] for fx in CONFIGS.values()}
    assert any(fx["prefill_len"] % fx["eta"] == 0 and fx["q"].shape[2] > fx["prefill_len"] + fx["eta"]
               for fx in lola)                                                    # prefill + decode
    assert any(fx["fmap_q"].shape[2] != fx["fmap_q"].shape[1] for fx in lola)     # feature dim != head dim
    prov = json.loads((FIXTURES / "PROVENANCE.json").read_text())
    assert prov["upstream"]["lola"]["commit"].startswith("679769f")
    assert len(prov["upstream"]["lola"]["files_sha256"]
               ["src/model/linear_attention/linear_window_attention_sw_sparse.py"]) == 64


@pytest.mark.parametrize("max_logit", [7.0, 145.0, 436.0])
def test_lola_formula_matches_the_unshifted_form_without_overflow(max_logit):
    """combine='lola' is (g*S*v + (1-g)*phi.H) / (g*S + (1-g)*phi.s + eps) with the unshifted S = sum exp(logit):
    computed shifted in float32 it must equal that formula evaluated in float64, even where exp(logit) overflows
    float32 (the authors' bf16 path returns inf/nan there)."""
    from lola_bench.attention.common import mix

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 40, generator=g, dtype=torch.float64) * 3
    logits[..., 0] = max_logit
    v = torch.randn(3, 5, 40, 8, generator=g, dtype=torch.float64)
    lin_num = torch.randn(3, 5, 8, generator=g, dtype=torch.float64)
    lin_den = torch.rand(3, 5, 1, generator=g, dtype=torch.float64) * 50 + 1
    factor = torch.randn(3, 1, 1, generator=g, dtype=torch.float64)
    eps = 1e-6
    gate = torch.sigmoid(factor)
    e = torch.exp(logits)                                     # float64: finite up to logit ~709
    want = (gate * (e.unsqueeze(-1) * v).sum(-2) + (1 - gate) * lin_num) / (
        gate * e.sum(-1, keepdim=True) + (1 - gate) * lin_den + eps)
    m = logits.amax(-1, keepdim=True)
    es = torch.exp(logits - m)
    f32 = torch.float32
    got = mix("lola", factor.to(f32), (es.unsqueeze(-1) * v).sum(-2).to(f32), es.sum(-1, keepdim=True).to(f32),
              lin_num.to(f32), lin_den.to(f32), eps, m.to(f32))
    assert torch.isfinite(got).all()
    assert _rel(got.double(), want) <= 1e-5
