"""Needle diagnostics against the attention code: the replayed selection reproduces the real sparse cache, the leave
ranks agree with what was kept, and the last query's weight split reproduces the layer's output (all combines)."""

from __future__ import annotations

import pytest
import torch

from lola_bench.attention.chunked import lola_chunked
from lola_bench.attention.config import LolaConfig
from lola_bench.attention.state import LolaState
from lola_bench.attention.testing import make_params, qkv
from lola_bench.diagnostics.needle import key_weights, mass_shares
from lola_bench.diagnostics.replay import replay_ranks

L = 203


@pytest.mark.parametrize("scorer,gqa,sinks,fold", [
    ("sre", "expanded", 0, True), ("sre", "grouped", 2, True), ("random", "expanded", 1, True),
    ("key_norm", "expanded", 0, False), ("recency", "grouped", 0, True), ("sink", "expanded", 0, False),
])
def test_replay_reproduces_the_real_sparse_cache(scorer, gqa, sinks, fold):
    cfg = LolaConfig(window=16, sparse=24, scorer=scorer, gqa=gqa, sinks=sinks, fold=fold,
                     feature_map="hedgehog" if scorer == "sre" else "hedgehog-identity")
    p = make_params(cfg)
    q, k, v = qkv(L)
    st = LolaState()
    lola_chunked(q, k, v, st, p)
    res = replay_ranks(k, v, p, range(L), full=True)
    assert torch.equal(res.sparse_pos, st.sp_pos[0]), "replayed sparse cache differs from the real one"
    final = st.sp_pos[0]
    ranked = 0
    for pos, r in res.ranks.items():
        assert r.boundary > pos and len(r.rank) == final.shape[0]
        for h, rank in enumerate(r.rank):
            if rank > r.keep:      # not kept when it left: folded there, never back
                assert pos not in final[h].tolist()
                ranked += 1
            if pos in final[h].tolist():
                assert rank <= r.keep
    assert ranked > 0 or scorer == "recency"   # recency: a leaving pair is always among the newest kept


def test_replay_refuses_mass_scorers():
    p = make_params(LolaConfig(window=16, sparse=8, scorer="attention"))
    _, k, v = qkv(64)
    assert replay_ranks(k, v, p, [3]) is None


def _exact_mask(st: LolaState, p, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    win = torch.zeros(n, dtype=torch.bool)
    win[st.win_pos] = True
    sp = torch.zeros(st.sp_pos.shape[1], n, dtype=torch.bool).scatter_(1, st.sp_pos[0], True)
    return (sp | win).repeat_interleave(p.group, dim=0), win


@pytest.mark.parametrize("combine", ["lola", "calibrated", "gated", "lolcats", "normalized"])
@pytest.mark.parametrize("gqa", ["expanded", "grouped"])
def test_weights_reproduce_the_last_output(combine, gqa):
    """sum_p w_p v_p + w_lin phi(q)^T H / phi(q)^T s, with the weights of ``key_weights``, is the layer's output for
    the last query (an independent computation: lola_chunked), and needle + window + sparse + linear = 1."""
    cfg = LolaConfig(window=16, sparse=20, combine=combine, gqa=gqa, feature_map="hedgehog")
    p = make_params(cfg, dtype=torch.float64)
    q, k, v = qkv(L, dtype=torch.float64)
    st = LolaState()
    out = lola_chunked(q, k, v, st, p)[0, :, -1]                                # (Hq, d)
    assert st.n_folded > 0
    rep = p.num_heads // p.num_kv_heads
    kq, vq = k[0].repeat_interleave(rep, 0), v[0].repeat_interleave(rep, 0)
    exact, win = _exact_mask(st, p, L)
    qt = q[0, :, -1]
    phi_q = p.feature_map_q(qt.view(1, -1, 1, qt.shape[-1]))[0, :, 0]
    lin_num, lin_den = torch.einsum("hf,hfd->hd", phi_q, st.H[0]), (phi_q * st.s[0]).sum(-1)
    w, w_lin = key_weights(qt, kq, exact, p, lin_den)
    assert torch.all(w[~exact] == 0)
    y = torch.einsum("hp,hpd->hd", w, vq) + w_lin.unsqueeze(-1) * lin_num / lin_den.unsqueeze(-1)
    torch.testing.assert_close(y, out, rtol=1e-6, atol=1e-6)
    needle = torch.zeros(L, dtype=torch.bool)
    needle[[5, 6, 150, L - 3]] = True
    sh = mass_shares(qt, kq, exact, needle, win, p, lin_den)
    total = sh["needle"] + sh["window"] + sh["sparse"] + sh["linear"]
    torch.testing.assert_close(total, torch.ones_like(total))
    torch.testing.assert_close(sh["linear"], w_lin)
    torch.testing.assert_close(sh["window"], (w * (win & ~needle)).sum(-1))
    assert torch.all(sh["needle"] >= (w[:, L - 3])) and torch.all(sh["sparse"] >= 0)


def test_no_linear_memory_is_plain_softmax():
    cfg = LolaConfig(window=16, sparse=500)
    p = make_params(cfg)
    q, k, v = qkv(100)
    kq = k[0].repeat_interleave(2, 0)
    exact = torch.ones(4, 100, dtype=torch.bool)
    w, w_lin = key_weights(q[0, :, -1], kq, exact, p, None)
    ref = torch.softmax(torch.einsum("hd,hpd->hp", q[0, :, -1], kq) * 16 ** -0.5, -1)
    torch.testing.assert_close(w, ref)
    assert torch.all(w_lin == 0)
