"""KV eviction (``LolaConfig.fold`` off, ``--attn evict``): the invariants LoLA has, with the dropped pairs gone.

The reference is the specification here too; the oracle of ``test_output_is_softmax_over_exactly_the_kept_pairs``
is independent of it (plain softmax over the positions the state says it holds, from the original q, k, v).
"""

import pytest
import torch

from lola_bench.attention import testing
from lola_bench.attention.chunked import lola_chunked
from lola_bench.attention.config import LolaConfig
from lola_bench.attention.decode import lola_decode
from lola_bench.attention.reference import lola_reference
from lola_bench.attention.scorers import ScoreContext, make_scorer
from lola_bench.attention.state import LolaState, analytic_bytes
from lola_bench.errors import UserError

D = 16
EVICT_SCORERS = ("random", "key_norm", "attention", "recency", "sink", "snapkv")


def make_params(cfg, hq=4, hkv=2):
    return testing.make_params(cfg, hq, hkv, D, dtype=torch.float64)


def qkv(L, hq=4, hkv=2, b=2):
    return testing.qkv(L, hq, hkv, b, D, torch.float64)


def softmax_attention(q, k, v, allowed=None):
    """Causal softmax attention; ``allowed`` (B, Hq, L, L) bool restricts the keys further."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    L = q.shape[2]
    s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    mask = torch.ones(L, L, dtype=torch.bool).tril()
    if allowed is not None:
        mask = mask & allowed
    return torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v


def evict_cfg(**kw):
    return LolaConfig(**{"feature_map": "hedgehog", "fold": False, "scorer": "sink", **kw})


@pytest.mark.parametrize("scorer", EVICT_SCORERS)
@pytest.mark.parametrize("gqa", ["grouped", "expanded"])
def test_everything_fits_is_full_attention(scorer, gqa):
    """lambda + eta >= T (no pair is ever dropped) => exactly full softmax attention, on every path."""
    L = 37
    cfg = evict_cfg(window=8, sparse=L - 8, scorer=scorer, gqa=gqa, sinks=2)
    p = make_params(cfg)
    q, k, v = qkv(L)
    want = softmax_attention(q, k, v)
    torch.testing.assert_close(lola_reference(q, k, v, p).out, want, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(lola_chunked(q, k, v, LolaState(), p), want, atol=1e-10, rtol=1e-9)
    st = LolaState()
    outs = [lola_decode(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], st, p) for t in range(L)]
    torch.testing.assert_close(torch.cat(outs, 2), want, atol=1e-10, rtol=1e-9)


CASES = [(sc, gqa, sparse, window, chunk, sinks) for sc in EVICT_SCORERS for gqa in ("grouped", "expanded")
         for sparse, window, chunk, sinks in [(7, 8, None, 0), (0, 4, None, 3), (5, 4, 3, 2), (0, 6, None, 0)]]


@pytest.mark.parametrize("scorer,gqa,sparse,window,chunk,sinks", CASES)
def test_prefill_then_decode_equals_one_prefill_and_reference(scorer, gqa, sparse, window, chunk, sinks):
    """Chunked prefill == reference; prefill of an odd prefix + token-by-token decode == one prefill (outputs, kept
    positions and pairs); lambda = 0 and sinks included; nothing is ever folded."""
    L = 53
    cfg = evict_cfg(window=window, sparse=sparse, chunk=chunk, scorer=scorer, gqa=gqa, sinks=sinks)
    p = make_params(cfg)
    q, k, v = qkv(L)
    ref = lola_reference(q, k, v, p)
    st = LolaState()
    out = lola_chunked(q, k, v, st, p)
    torch.testing.assert_close(out, ref.out, atol=1e-10, rtol=1e-9)
    assert torch.equal(st.sp_pos, ref.sparse_pos)
    st2 = LolaState()
    outs = [lola_chunked(q[:, :, :19], k[:, :, :19], v[:, :, :19], st2, p)]
    outs += [lola_decode(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], st2, p) for t in range(19, L)]
    torch.testing.assert_close(torch.cat(outs, 2), out, atol=1e-10, rtol=1e-9)
    assert torch.equal(st2.sp_pos, st.sp_pos) and torch.equal(st2.win_pos, st.win_pos)
    assert torch.equal(st2.sp_k, st.sp_k) and torch.equal(st2.sp_v, st.sp_v) and torch.equal(st2.win_k, st.win_k)
    for s in (st, st2):  # no linear state: nothing accumulated, zero bytes
        assert s.n_folded == 0 and s.H.numel() == 0 and s.s.numel() == 0
    assert ref.H.numel() == 0 and ref.s.numel() == 0


@pytest.mark.parametrize("gqa", ["grouped", "expanded"])
@pytest.mark.parametrize("scorer,sinks", [("key_norm", 0), ("attention", 2), ("snapkv", 0), ("sink", 4)])
def test_output_is_softmax_over_exactly_the_kept_pairs(gqa, scorer, sinks):
    """lambda + eta < T: each decoded token's output is plain softmax over exactly the positions the state keeps
    (sparse cache + window, computed from the original q, k, v), which differs from full attention; the kept set
    has the expected size and the reference ends with the same sparse positions."""
    L, window, sparse = 45, 4, 3
    cfg = evict_cfg(window=window, sparse=sparse, scorer=scorer, gqa=gqa, sinks=sinks)
    p = make_params(cfg)
    q, k, v = qkv(L)
    b, hq = q.shape[:2]
    st = LolaState()
    outs, allowed = [], torch.zeros(b, hq, L, L, dtype=torch.bool)
    for t in range(L):
        outs.append(lola_decode(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], st, p))
        sp = st.sp_pos if gqa == "expanded" else st.sp_pos.repeat_interleave(p.group, 1)  # (B, Hq, ns)
        allowed[:, :, t].scatter_(-1, sp, True)
        allowed[:, :, t, st.win_pos] = True
        ws = cfg.window_start(t // cfg.chunk_size)
        assert st.win_pos.tolist() == list(range(ws, t + 1))
        assert sp.shape[-1] == min(sparse + min(sinks, ws), ws)
        assert bool((sp < ws).all()) and (not sinks or bool((sp[..., :min(sinks, ws)] ==
                                                              torch.arange(min(sinks, ws))).all()))
    got = torch.cat(outs, 2)
    oracle = softmax_attention(q, k, v, allowed)
    torch.testing.assert_close(got, oracle, atol=1e-10, rtol=1e-9)
    assert (got - softmax_attention(q, k, v)).abs().max() > 1e-3, "pairs were dropped: not full attention"
    assert torch.equal(lola_reference(q, k, v, p).sparse_pos, st.sp_pos)
    assert st.n_folded == 0 and st.H.abs().sum() == 0


def test_no_feature_map_and_no_state_tier():
    """Eviction never calls a feature map, and its byte accounting has no state tier (held == analytic)."""
    cfg = evict_cfg(window=8, sparse=5, scorer="attention", sinks=2)
    p = make_params(cfg)

    def boom(*a, **kw):
        raise AssertionError("a feature map was called under eviction")

    p.feature_map_q.forward = p.feature_map_k.forward = boom
    q, k, v = qkv(41)
    st = LolaState()
    lola_chunked(q, k, v, st, p)
    lola_reference(q, k, v, p)
    lola_decode(*(x[:, :, :1] for x in qkv(1)), st, p)
    held = st.nbytes_by_tier()
    want = analytic_bytes(cfg, 42, batch=2, query_heads=4, kv_heads=2, head_dim=D, feature_dim=p.feature_dim,
                          dtype=torch.float64)
    assert held == want and held["state"] == 0 and held["sparse"] > 0
    lola = analytic_bytes(LolaConfig(window=8, sparse=5, feature_map="hedgehog", scorer="attention", sinks=2), 42,
                          batch=2, query_heads=4, kv_heads=2, head_dim=D, feature_dim=p.feature_dim,
                          dtype=torch.float64)
    assert lola["state"] > 0 and {k: v for k, v in lola.items() if k != "state"} == \
        {k: v for k, v in held.items() if k != "state"}


def test_sre_is_refused_for_eviction():
    with pytest.raises(UserError, match="sre.*no linear state"):
        evict_cfg(scorer="sre")
    LolaConfig(scorer="sre")  # LoLA keeps it


def test_snapkv_scorer_pools_the_mass_of_neighbours():
    """The score of a candidate is the mean of the mass over its kernel-5 neighbourhood (in candidate order, zero
    padding counted), as SnapKV's default ``avgpool``."""
    acc = torch.tensor([[[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0, 1.0]]])
    n = acc.shape[-1]
    ctx = ScoreContext(k=torch.zeros(1, 1, n, D), v=torch.zeros(1, 1, n, D), pos=torch.arange(n).view(1, 1, n),
                       phi_k=None, H=None, s=None, acc=acc, group=1, eps=1e-6, seed=0)
    sc = make_scorer("snapkv").score(ctx)
    torch.testing.assert_close(sc, torch.tensor([[[0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2, 0.2]]]))
    keep = torch.sort(sc, dim=-1, descending=True, stable=True).indices[..., :6].sort().values
    assert keep.tolist() == [[[4, 5, 6, 7, 8, 9]]]


@pytest.mark.parametrize("path", ["reference", "chunked", "decode"])
def test_snapkv_uses_the_last_chunk_where_h2o_accumulates(path):
    """Crafted: the queries of chunk 1 all look at position 8, one query of chunk 2 looks at position 15. At the
    boundary of chunk 3 (candidates: the kept pair + 8..15, one slot), H2O (accumulated mass) keeps 8, SnapKV-style
    (mass of the last chunk's queries) picks 15's neighbourhood: average pooling over five neighbours gives 13 (whose
    neighbourhood 11..15 holds 15 and no padding) the highest score."""
    L, W = 25, 8
    q, k, v = (torch.zeros(1, 1, L, D, dtype=torch.float64) for _ in range(3))
    g = torch.Generator().manual_seed(0)
    k += 0.1 * torch.randn(1, 1, L, D, generator=g, dtype=torch.float64)
    k[0, 0, 8, 0] = k[0, 0, 15, 1] = 10.0
    q[0, 0, 9:16, 0] = 10.0   # chunk 1 -> position 8
    q[0, 0, 16, 1] = 10.0     # chunk 2 -> position 15 (the other queries of chunk 2 are uniform)
    kept = {}
    for scorer in ("attention", "snapkv"):
        p = testing.make_params(evict_cfg(window=W, sparse=1, scorer=scorer), 1, 1, D, dtype=torch.float64)
        if path == "reference":
            kept[scorer] = lola_reference(q, k, v, p).sparse_pos.flatten().tolist()
        else:
            st = LolaState()
            if path == "chunked":
                lola_chunked(q, k, v, st, p)
            else:
                for t in range(L):
                    lola_decode(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], st, p)
            kept[scorer] = st.sp_pos.flatten().tolist()
    assert kept == {"attention": [8], "snapkv": [13]}


def test_kernels_refuse_eviction():
    from lola_bench.attention.kernels import unsupported_reason
    from lola_bench.models.patch import _paths

    p = make_params(evict_cfg(scorer="sink"))
    q = torch.zeros(1, 4, 1, D)
    assert unsupported_reason(q, p) == "eviction has no kernel"
    assert _paths(q, p, "triton")[2] == "torch (fallback: eviction has no kernel)"
