"""The torch reference is the specification: fast paths against it, and it against exact invariants."""

import pytest
import torch

from lola_bench.attention import testing
from lola_bench.attention.chunked import lola_chunked
from lola_bench.attention.common import LolaParams
from lola_bench.attention.config import FEATURE_MAPS, SCORERS, LolaConfig
from lola_bench.attention.decode import lola_decode
from lola_bench.attention.feature_maps import make_feature_map
from lola_bench.attention.reference import lola_reference
from lola_bench.attention.scorers import make_scorer
from lola_bench.attention.state import LolaState, analytic_bytes
from lola_bench.errors import UserError

D = 16


def make_params(cfg, hq=4, hkv=2, d=D, dtype=torch.float64):
    """float64 by default here: the fast paths must match the specification to rounding."""
    return testing.make_params(cfg, hq, hkv, d, dtype=dtype)


def qkv(L, hq=4, hkv=2, b=2, d=D, dtype=torch.float64):
    return testing.qkv(L, hq, hkv, b, d, dtype)


def softmax_attention(q, k, v):
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    L = q.shape[2]
    s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    s = s.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, -1) @ v


def window_plus_linear(q, k, v, params):
    """Independent quadratic oracle for lambda = 0: block sliding window (softmax) + linear attention."""
    cfg = params.cfg
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    L = q.shape[2]
    t = torch.arange(L).view(-1, 1)
    j = torch.arange(L).view(1, -1)
    ws = torch.tensor([cfg.window_start(int(i) // cfg.chunk_size) for i in range(L)]).view(-1, 1)
    sink = j < cfg.sinks  # attention sinks: always softmax, never linear
    soft = ((j >= ws) | sink) & (j <= t)
    lin = (j < ws) & ~sink
    s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    s = s.masked_fill(~soft, float("-inf"))
    e = torch.exp(s - s.amax(-1, keepdim=True))
    a = (params.feature_map_q(q) @ params.feature_map_k(k).transpose(-1, -2)) * lin
    g = torch.sigmoid(params.window_factors).view(1, -1, 1, 1)
    has_lin = lin.any(-1).view(1, 1, -1, 1)
    if cfg.combine == "calibrated":  # unshifted: sum exp(s) v + exp(factor) phi(q)^T H, no max subtraction
        es = torch.exp(s)
        w = torch.exp(params.window_factors).view(1, -1, 1, 1)
        # eps relative to the softmax sum: no shift appears anywhere
        y = (es @ v + w * (a @ v)) / (es.sum(-1, keepdim=True) * (1 + cfg.eps) + w * a.sum(-1, keepdim=True))
    elif cfg.combine == "normalized":  # each memory averaged on its own, then mixed g : 1 - g
        y = g * (e @ v) / e.sum(-1, keepdim=True) + (1 - g) * (a @ v) / (a.sum(-1, keepdim=True) + cfg.eps)
    elif cfg.combine == "gated":
        y = (g * e @ v + (1 - g) * a @ v) / (g * e.sum(-1, keepdim=True) + (1 - g) * a.sum(-1, keepdim=True) + cfg.eps)
    else:
        y = (g * e @ v + a @ v) / (g * e.sum(-1, keepdim=True) + a.sum(-1, keepdim=True) + cfg.eps)
    return torch.where(has_lin, y, (e @ v) / e.sum(-1, keepdim=True))


@pytest.mark.parametrize("L", [63, 65, 200])
@pytest.mark.parametrize("gqa", ["grouped", "expanded"])
def test_cache_covering_sequence_equals_softmax(L, gqa):
    """Invariant 1: lambda + eta >= L  =>  exact softmax attention (fp32, tight)."""
    q, k, v = qkv(L, dtype=torch.float32)
    for window, sparse, sinks in [(L, 0, 0), (16, L - 16, 0), (8, L, 0), (16, L - 20, 4)]:
        cfg = LolaConfig(window=window, sparse=sparse, gqa=gqa, sinks=sinks)
        p = make_params(cfg, dtype=torch.float32)
        want = softmax_attention(q, k, v)
        torch.testing.assert_close(lola_reference(q, k, v, p).out, want, atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(lola_chunked(q, k, v, LolaState(), p), want, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("L,window,chunk,sinks", [(63, 8, None, 0), (65, 16, None, 0), (200, 16, None, 0),
                                                  (65, 8, 1, 0), (65, 8, 5, 0), (65, 8, None, 3), (65, 8, 5, 7)])
@pytest.mark.parametrize("combine", ["gated", "lolcats", "normalized", "calibrated"])
def test_lambda_zero_is_window_plus_linear(L, window, chunk, sinks, combine):
    """Invariant 2: lambda = 0  =>  sliding window (+ sinks) + linear attention, as an independent dense oracle."""
    cfg = LolaConfig(window=window, sparse=0, chunk=chunk, combine=combine, feature_map="hedgehog", sinks=sinks)
    p = make_params(cfg)
    q, k, v = qkv(L)
    want = window_plus_linear(q, k, v, p)
    torch.testing.assert_close(lola_reference(q, k, v, p).out, want, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(lola_chunked(q, k, v, LolaState(), p), want, atol=1e-10, rtol=1e-9)


# every scorer with the learned map, every feature map with SRE, both GQA layouts
CASES = [(fm, sc, gqa) for gqa in ("grouped", "expanded")
         for fm, sc in [("hedgehog", sc) for sc in SCORERS] + [(fm, "sre") for fm in FEATURE_MAPS if fm != "hedgehog"]]


@pytest.mark.parametrize("feature_map,scorer,gqa", CASES)
def test_chunked_and_decode_match_reference(feature_map, scorer, gqa):
    """Chunked prefill and prefill-then-decode equal the reference, outputs and final state (float64)."""
    L = 65
    for sparse, window, chunk, combine, sinks in [(7, 8, None, "lolcats", 0), (20, 8, 3, "gated", 0),
                                                    (5, 4, None, "normalized", 0), (9, 8, None, "calibrated", 0),
                                                    (6, 8, None, "calibrated", 3), (0, 4, 3, "gated", 2)]:
        cfg = LolaConfig(window=window, sparse=sparse, chunk=chunk, feature_map=feature_map, scorer=scorer, gqa=gqa,
                         combine=combine, sinks=sinks)
        p = make_params(cfg)
        q, k, v = qkv(L)
        ref = lola_reference(q, k, v, p)
        st = LolaState()
        torch.testing.assert_close(lola_chunked(q, k, v, st, p), ref.out, atol=1e-10, rtol=1e-9)
        assert torch.equal(st.sp_pos, ref.sparse_pos)
        torch.testing.assert_close(st.H, ref.H, atol=1e-10, rtol=1e-9)
        torch.testing.assert_close(st.s, ref.s, atol=1e-10, rtol=1e-9)
        # Invariant 3: prefill of a prefix, then token-by-token decode == one prefill (same cadence)
        st2 = LolaState()
        outs = [lola_chunked(q[:, :, :30], k[:, :, :30], v[:, :, :30], st2, p)]
        outs += [lola_decode(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], st2, p) for t in range(30, L)]
        torch.testing.assert_close(torch.cat(outs, 2), ref.out, atol=1e-10, rtol=1e-9)
        assert torch.equal(st2.sp_pos, ref.sparse_pos)
        # Invariant 5: bytes held == analytic count from the config
        want = analytic_bytes(cfg, L, batch=2, query_heads=4, kv_heads=2, head_dim=D, feature_dim=p.feature_dim,
                              dtype=torch.float64)
        assert st.nbytes_by_tier() == want == st2.nbytes_by_tier()


def test_unaligned_blocks_equal_one_prefill():
    cfg = LolaConfig(window=8, sparse=5)
    p = make_params(cfg)
    q, k, v = qkv(90)
    ref = lola_reference(q, k, v, p).out
    st = LolaState()
    outs = []
    for a, b in [(0, 5), (5, 22), (22, 23), (23, 61), (61, 90)]:
        outs.append(lola_chunked(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], st, p))
    torch.testing.assert_close(torch.cat(outs, 2), ref, atol=1e-10, rtol=1e-9)


def test_sparse_cache_is_bounded_and_sre_keeps_hard_pairs():
    """With a state built from one repeated pair, a novel pair has the largest SRE and must be kept."""
    cfg = LolaConfig(window=4, sparse=1, chunk=4, feature_map="elu")
    p = make_params(cfg, hq=1, hkv=1)
    L = 40
    k = torch.ones(1, 1, L, D, dtype=torch.float64)
    v = torch.ones(1, 1, L, D, dtype=torch.float64)
    k[0, 0, 10], v[0, 0, 10] = -1.0, 5.0  # the odd one out
    q = torch.randn(1, 1, L, D, dtype=torch.float64)
    st = LolaState()
    lola_chunked(q, k, v, st, p)
    assert st.sp_pos.shape[-1] == 1 and int(st.sp_pos[0, 0, 0]) == 10


@pytest.mark.parametrize("kwargs,match", [
    (dict(window=0), "window"), (dict(sparse=-1), "lambda"), (dict(feature_map="nope"), "feature map"),
    (dict(scorer="nope"), "scorer"), (dict(combine="x"), "combine"), (dict(gqa="x"), "GQA"), (dict(chunk=0), "chunk"),
])
def test_bad_configs(kwargs, match):
    with pytest.raises(UserError, match=match):
        LolaConfig(**kwargs)


def test_head_dim_mismatch():
    cfg = LolaConfig()
    with pytest.raises(UserError, match="head_dim"):
        LolaParams(cfg, make_feature_map("elu", 4, 32), make_feature_map("elu", 4, 32), torch.zeros(4),
                   make_scorer("sre"), 4, 2, 16)


@pytest.mark.parametrize("chunk", [None, 1, 5])
@pytest.mark.parametrize("combine", ["gated", "lolcats", "normalized", "calibrated"])
@pytest.mark.parametrize("sinks", [0, 3])
def test_dense_hybrid_equals_reference_at_lambda_zero(chunk, combine, sinks):
    from lola_bench.attention.hybrid import hybrid_attention

    cfg = LolaConfig(window=8, sparse=0, chunk=chunk, combine=combine, feature_map="hedgehog", sinks=sinks)
    p = make_params(cfg)
    q, k, v = qkv(65)
    torch.testing.assert_close(hybrid_attention(q, k, v, p), lola_reference(q, k, v, p).out, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_paths_track_the_reference(dtype):
    """16-bit K/V with float32 state: scoring and folding must not mix dtypes, and stay close to the spec."""
    cfg = LolaConfig(window=8, sparse=6, feature_map="hedgehog-identity")
    p = make_params(cfg, dtype=torch.float32)
    q, k, v = (t.to(dtype) for t in qkv(65, dtype=torch.float32))
    st = LolaState()
    out = lola_chunked(q, k, v, st, p)
    assert out.dtype == dtype and st.H.dtype == torch.float32
    ref = lola_reference(q.float(), k.float(), v.float(), p).out
    assert (out.float() - ref).abs().max() < 0.05
    testing.assert_close(out.float(), ref, 1e-2, f"{dtype} chunked vs float32 reference")  # measured 2e-4 / 1.6e-3
    step = lola_decode(q[:, :, -1:], k[:, :, -1:], v[:, :, -1:], st, p)
    assert torch.isfinite(step.float()).all()


@pytest.mark.parametrize("window,sparse,chunk,sinks", [(8, 0, None, 0), (8, 20, None, 0), (8, 13, 3, 0), (5, 0, 1, 0),
                                                       (8, 20, None, 4), (5, 0, 1, 3)])
def test_exact_len_is_where_folding_starts(window, sparse, chunk, sinks):
    """LolaConfig.exact_len: up to that many tokens LoLA is softmax attention; one more token folds a pair."""
    cfg = LolaConfig(window=window, sparse=sparse, chunk=chunk, sinks=sinks)
    p = make_params(cfg)
    n = cfg.exact_len
    q, k, v = qkv(n + 1)
    st = LolaState()
    out = lola_chunked(q[:, :, :n], k[:, :, :n], v[:, :, :n], st, p)
    assert st.n_folded == 0
    torch.testing.assert_close(out, softmax_attention(q[:, :, :n], k[:, :, :n], v[:, :, :n]), atol=1e-10, rtol=1e-9)
    lola_decode(q[:, :, n:], k[:, :, n:], v[:, :, n:], st, p)
    assert st.n_folded > 0


@pytest.mark.parametrize("sparse,sinks,ws,n,want", [(5, 0, 40, 12, 5), (5, 3, 40, 12, 8), (5, 3, 2, 12, 7),
                                                   (5, 3, 40, 6, 6), (0, 0, 40, 9, 0), (0, 4, 40, 9, 4)])
def test_keep_rule(sparse, sinks, ws, n, want):
    """LolaConfig.keep: lambda scored pairs plus the sinks that have left the window, at most the candidates."""
    assert LolaConfig(window=8, sparse=sparse, sinks=sinks).keep(ws, n) == want


def test_assert_close_is_relative_rms_and_fails_on_nan():
    want = torch.randn(4, 64, dtype=torch.float64)
    testing.assert_close(want * (1 + 1e-4), want, 2e-4)
    with pytest.raises(AssertionError, match="relative RMS error"):
        testing.assert_close(want * (1 + 1e-3), want, 2e-4, "scaled")
    bad = want.clone()
    bad[2, 7] = float("nan")
    with pytest.raises(AssertionError, match="nan"):
        testing.assert_close(bad, want, 1.0)
    with pytest.raises(AssertionError, match="shape"):
        testing.assert_close(want[:, :1], want[:, :1].expand(4, 2), 1.0)


def test_clone_state_is_independent():
    p = make_params(LolaConfig(window=8, sparse=4))
    st = testing.random_state(p, 1, 2, 4, 8, 40, torch.float32, 3)
    c = testing.clone_state(st)
    c.H += 1
    c.sp_pos[0, 0, 0] = -1
    assert not torch.equal(c.H, st.H) and int(st.sp_pos[0, 0, 0]) >= 0 and c.pos == st.pos


def test_empty_is_nan_poisoned_here():
    """tests/attention/conftest.py: unwritten torch.empty / empty_like elements are NaN (integers: their max)."""
    assert torch.empty(5).isnan().all() and torch.empty_like(torch.zeros(2, 3, dtype=torch.float16)).isnan().all()
    assert (torch.empty(4, dtype=torch.int32) == torch.iinfo(torch.int32).max).all()
