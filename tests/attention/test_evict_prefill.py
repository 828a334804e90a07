"""Eviction after a full prefill (``LolaConfig.evict_at = "prompt_end"``, ``--evict-at prompt_end``).

The reference (``lola_reference(..., prompt_len=P)``) is the specification; the full-attention oracle here
(``softmax_attention``) and the direct after-compression attention (``kept_attention``) are independent of it and
of the fast path. After the one compression at the end of the prompt nothing is ever evicted again: every later token
joins the window, which grows.
"""

from dataclasses import replace

import pytest
import torch

from lola_bench.attention import testing
from lola_bench.attention.chunked import lola_chunked
from lola_bench.attention.config import LolaConfig
from lola_bench.attention.decode import lola_decode
from lola_bench.attention.prompt_end import full_mass
from lola_bench.attention.reference import lola_reference
from lola_bench.attention.state import LolaState, analytic_bytes
from lola_bench.errors import UserError

D = 16
EVICT_SCORERS = ("sink", "key_norm", "random", "recency", "attention", "snapkv")


def softmax_attention(q, k, v):
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    L = q.shape[2]
    s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return torch.softmax(s.masked_fill(~torch.ones(L, L, dtype=torch.bool).tril(), float("-inf")), -1) @ v


def cfg_of(**kw):
    return LolaConfig(**{"feature_map": "hedgehog", "fold": False, "scorer": "sink", "evict_at": "prompt_end", **kw})


def run(q, k, v, p, prompt_len, continuation=0):
    """Prefill the prompt, then ``continuation`` tokens in one more call, then decode the rest token by token."""
    st = LolaState()
    P, L = prompt_len, q.shape[2]
    outs = [lola_chunked(q[:, :, :P], k[:, :, :P], v[:, :, :P], st, p)]
    if continuation:
        e = P + continuation
        outs.append(lola_chunked(q[:, :, P:e], k[:, :, P:e], v[:, :, P:e], st, p))
        P = e
    outs += [lola_decode(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], st, p) for t in range(P, L)]
    return torch.cat(outs, 2), st


def storage(x, p):
    """(B, Hkv, L, d) -> (B, Hs, L, d) as the state stores keys / values."""
    return x if p.cfg.gqa == "grouped" else x.repeat_interleave(p.num_heads // p.num_kv_heads, 1)


def assert_state_matches(st, ref, p, k, v, prompt_len):
    """The reference's kept positions; the window = every position from the compression's window start on (exactly
    the keys and values read), however many tokens came after the prompt; no mass tracked, nothing folded."""
    assert torch.equal(st.sp_pos, ref.sparse_pos)
    ws = p.cfg.window_start(prompt_len // p.cfg.chunk_size)
    assert st.win_pos.tolist() == list(range(ws, st.pos))
    assert torch.equal(st.win_k, storage(k, p)[:, :, ws:st.pos])
    assert torch.equal(st.win_v, storage(v, p)[:, :, ws:st.pos])
    assert st.win_acc is None and st.sp_acc is None and ref.acc is None
    assert st.n_folded == 0 and st.H.numel() == 0


# (window, sparse, chunk, sinks, prompt_len, total): odd lengths, lambda 0, sinks, a prompt ending on a chunk
# boundary (24 with chunk 8 / 4), one shorter than the first window start, chunk != window
SHAPES = [(4, 5, None, 2, 23, 37), (8, 0, None, 0, 24, 41), (4, 3, 3, 1, 17, 40), (5, 2, None, 3, 7, 29),
          (6, 4, None, 0, 24, 33)]


@pytest.mark.parametrize("scorer", EVICT_SCORERS)
@pytest.mark.parametrize("gqa", ["grouped", "expanded"])
@pytest.mark.parametrize("window,sparse,chunk,sinks,prompt,total", SHAPES)
def test_prefill_then_decode_matches_the_reference(scorer, gqa, window, sparse, chunk, sinks, prompt, total):
    """Prefill of the prompt (full attention + one compression) then decode == the reference with prompt_len: every
    output, the final sparse positions and the window (every token since the compression's window start); the same
    with a multi-token call between prompt and decode (it evicts nothing either)."""
    cfg = cfg_of(window=window, sparse=sparse, chunk=chunk, sinks=sinks, scorer=scorer, gqa=gqa)
    p = testing.make_params(cfg, 4, 2, D, dtype=torch.float64)
    q, k, v = testing.qkv(total, 4, 2, 2, D, torch.float64)
    ref = lola_reference(q, k, v, p, prompt_len=prompt)
    out, st = run(q, k, v, p, prompt)
    torch.testing.assert_close(out, ref.out, atol=1e-10, rtol=1e-9)
    assert_state_matches(st, ref, p, k, v, prompt)
    out2, st2 = run(q, k, v, p, prompt, continuation=total - prompt - 3)   # crosses several chunk boundaries
    torch.testing.assert_close(out2, ref.out, atol=1e-10, rtol=1e-9)
    assert_state_matches(st2, ref, p, k, v, prompt)


def kept_attention(q, k, v, p, sp_pos, ws, t):
    """(B, Hq, d): softmax attention of the query at t over exactly its storage head's kept prompt pairs (sp_pos
    (B, Hs, ns)) and every key from ws to t, computed head by head from q, k, v."""
    b, hq = q.shape[:2]
    rep, g = hq // k.shape[1], p.group
    out = torch.empty(b, hq, q.shape[-1], dtype=q.dtype)
    for i in range(b):
        for h in range(hq):
            keys = sorted(sp_pos[i, h // g].tolist()) + list(range(ws, t + 1))
            assert len(set(keys)) == len(keys) and max(keys) == t      # kept prompt pairs all lie before ws
            kk, vv = k[i, h // rep, keys], v[i, h // rep, keys]
            out[i, h] = torch.softmax(kk @ q[i, h, t] * q.shape[-1] ** -0.5, -1) @ vv
    return out


@pytest.mark.parametrize("scorer", EVICT_SCORERS)
@pytest.mark.parametrize("gqa", ["grouped", "expanded"])
@pytest.mark.parametrize("P", [23, 24])
def test_decode_after_the_compression_keeps_every_token(scorer, gqa, P):
    """The invariant of prompt_end: after the compression, N decoded tokens (several chunk boundaries) leave the
    compressed prompt cache unchanged (the same positions, keys and values in the sparse cache and in the window it
    kept) and keep every generated token in the window; each step's output is softmax over exactly (kept prompt
    pairs + every key from the window start up to itself). A continuation call in one piece gives the same."""
    W, N = 4, 17
    cfg = cfg_of(window=W, sparse=3, sinks=1, scorer=scorer, gqa=gqa)
    p = testing.make_params(cfg, 4, 2, D, dtype=torch.float64)
    q, k, v = testing.qkv(P + N, 4, 2, 2, D, torch.float64)
    ws = cfg.window_start(P // W)
    for continuation in (False, True):
        st = LolaState()
        lola_chunked(q[:, :, :P], k[:, :, :P], v[:, :, :P], st, p)
        before = testing.clone_state(st)
        assert 0 < st.sp_pos.shape[-1] < ws                            # something was dropped at the compression
        if continuation:
            outs = lola_chunked(q[:, :, P:], k[:, :, P:], v[:, :, P:], st, p)
        else:
            outs = torch.cat([lola_decode(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], st, p)
                              for t in range(P, P + N)], 2)
        for t in range(P, P + N):
            torch.testing.assert_close(outs[:, :, t - P], kept_attention(q, k, v, p, before.sp_pos, ws, t),
                                       atol=1e-10, rtol=1e-9)
        for name in ("sp_pos", "sp_k", "sp_v"):
            assert torch.equal(getattr(st, name), getattr(before, name)), name
        nw = P - ws
        assert torch.equal(st.win_pos[:nw], before.win_pos) and torch.equal(st.win_k[:, :, :nw], before.win_k)
        assert st.win_pos.tolist() == list(range(ws, P + N)) and st.pos == P + N
        assert torch.equal(st.win_k[:, :, nw:], storage(k, p)[:, :, P:]) and torch.equal(st.win_v[:, :, nw:],
                                                                                          storage(v, p)[:, :, P:])


def test_batched_path_refuses_prompt_end():
    """The batched path assumes the boundary rule (its selection pass and window slices): it refuses prompt_end
    states, which lola_chunked routes to prefill_then_compress, then to the chunk loop."""
    from lola_bench.attention.batched import lola_batched

    p = testing.make_params(cfg_of(window=4, sparse=3), 4, 2, D, dtype=torch.float64)
    q, k, v = testing.qkv(9, 4, 2, 1, D, torch.float64)
    with pytest.raises(ValueError, match="prompt_end"):
        lola_batched(q, k, v, LolaState(), p)


@pytest.mark.parametrize("scorer", EVICT_SCORERS)
@pytest.mark.parametrize("gqa", ["grouped", "expanded"])
def test_compression_right_after_the_prompt(scorer, gqa):
    """The state right after the prefill: the window starts at the window start of the chunk holding the next
    position, and the kept positions are the reference's (whole sequence = the prompt)."""
    window, sparse, sinks, P = 4, 5, 2, 31
    cfg = cfg_of(window=window, sparse=sparse, sinks=sinks, scorer=scorer, gqa=gqa)
    p = testing.make_params(cfg, 4, 2, D, dtype=torch.float64)
    q, k, v = testing.qkv(P, 4, 2, 1, D, torch.float64)
    st = LolaState()
    out = lola_chunked(q, k, v, st, p)
    ref = lola_reference(q, k, v, p)
    torch.testing.assert_close(out, softmax_attention(q, k, v), atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(ref.out, softmax_attention(q, k, v), atol=1e-10, rtol=1e-9)
    ws = cfg.window_start(P // cfg.chunk_size)
    assert st.win_pos.tolist() == list(range(ws, P))
    assert st.sp_pos.shape[-1] == cfg.keep(ws, ws) and bool((st.sp_pos < ws).all())
    assert bool((st.sp_pos[..., :sinks] == torch.arange(sinks)).all())
    assert_state_matches(st, ref, p, k, v, P)


@pytest.mark.parametrize("lam", [0, 3, 9, 1000])
@pytest.mark.parametrize("scorer", ["attention", "snapkv", "key_norm"])
def test_prefill_output_is_full_attention_for_every_lambda(lam, scorer):
    L = 29
    p = testing.make_params(cfg_of(window=4, sparse=lam, scorer=scorer, gqa="grouped"), 4, 2, D,
                            dtype=torch.float64)
    q, k, v = testing.qkv(L, 4, 2, 2, D, torch.float64)
    torch.testing.assert_close(lola_chunked(q, k, v, LolaState(), p), softmax_attention(q, k, v), atol=1e-10,
                               rtol=1e-9)


@pytest.mark.parametrize("scorer", EVICT_SCORERS)
@pytest.mark.parametrize("gqa", ["grouped", "expanded"])
def test_everything_fits_is_full_attention(scorer, gqa):
    """lambda + eta >= T: nothing is dropped, so prefill + decode is full attention exactly (fast path and spec)."""
    L, P, W = 37, 19, 8
    p = testing.make_params(cfg_of(window=W, sparse=L - W, scorer=scorer, gqa=gqa, sinks=2), 4, 2, D,
                            dtype=torch.float64)
    q, k, v = testing.qkv(L, 4, 2, 2, D, torch.float64)
    want = softmax_attention(q, k, v)
    torch.testing.assert_close(run(q, k, v, p, P)[0], want, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(lola_reference(q, k, v, p, prompt_len=P).out, want, atol=1e-10, rtol=1e-9)


NEEDLE = 11


def needle_case():
    """Crafted: key 11 is a needle that only the prompt's last 8 queries (and the decoded query 32) look at; the
    other queries are zero (uniform attention over what they see, so boundary mode's scores tie or favour early
    keys)."""
    L, P = 33, 32
    q, k, v = (torch.zeros(1, 1, L, D, dtype=torch.float64) for _ in range(3))
    g = torch.Generator().manual_seed(0)
    k += 0.1 * torch.randn(1, 1, L, D, generator=g, dtype=torch.float64)
    v += torch.randn(1, 1, L, D, generator=g, dtype=torch.float64)
    k[0, 0, NEEDLE, 0] = 10.0
    q[0, 0, P - 8:, 0] = 10.0
    return q, k, v, P


@pytest.mark.parametrize("scorer,sparse,kept", [("attention", 1, [11]), ("snapkv", 5, [9, 10, 11, 12, 13])])
def test_full_attention_information_keeps_what_the_end_of_the_prompt_wants(scorer, sparse, kept):
    """H2O / SnapKV after a full prefill keep the key the end of the prompt attends to (SnapKV: pooled with its
    neighbours, ties to the earliest), and a decoded query that looks at it reads its value; the boundary mode
    scored it before those queries came and dropped it."""
    q, k, v, P = needle_case()
    res = {}
    for evict_at in ("prompt_end", "boundary"):
        cfg = LolaConfig(feature_map="hedgehog", fold=False, window=8, sparse=sparse, scorer=scorer,
                         evict_at=evict_at)
        p = testing.make_params(cfg, 1, 1, D, dtype=torch.float64)
        out, st = run(q, k, v, p, P)
        ref = lola_reference(q, k, v, p, prompt_len=P)
        torch.testing.assert_close(out, ref.out, atol=1e-10, rtol=1e-9)
        assert torch.equal(st.sp_pos, ref.sparse_pos)
        res[evict_at] = (st.sp_pos.flatten().tolist(), out[0, 0, -1])
    assert res["prompt_end"][0] == kept
    assert NEEDLE not in res["boundary"][0]
    torch.testing.assert_close(res["prompt_end"][1], v[0, 0, NEEDLE], atol=1e-3, rtol=0)   # the needle's value
    assert (res["boundary"][1] - v[0, 0, NEEDLE]).abs().max() > 0.5


@pytest.mark.parametrize("gqa", ["grouped", "expanded"])
def test_full_mass_blocks_and_groups(gqa, monkeypatch):
    """The mass is the same however many queries a block holds, and is the group mean of per-query-head sums of the
    causal softmax probabilities."""
    import lola_bench.attention.prompt_end as pe

    P = 21
    p = testing.make_params(cfg_of(window=4, sparse=3, scorer="attention", gqa=gqa), 4, 2, D, dtype=torch.float64)
    q, k, _ = testing.qkv(P, 4, 2, 2, D, torch.float64)
    kq = k.repeat_interleave(2, 1)
    probs = torch.softmax(((q @ kq.transpose(-1, -2)) * D ** -0.5).masked_fill(
        ~torch.ones(P, P, dtype=torch.bool).tril(), float("-inf")), -1)
    want = probs[:, :, 5:17].sum(2)
    if gqa == "grouped":
        want = want.view(2, 2, 2, P).mean(2)
    torch.testing.assert_close(full_mass(q, k, 5, 17, p), want, atol=1e-12, rtol=1e-10)
    monkeypatch.setattr(pe, "MASS_BUDGET_BYTES", 3 * 2 * 4 * P * 8)     # three queries per block
    torch.testing.assert_close(full_mass(q, k, 5, 17, p), want, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("P", [64, 61])
def test_bytes_held_are_the_compressed_cache_plus_every_later_token(P):
    """After the prefill the state holds only the compressed cache (no view keeps the prompt's K/V alive) and no
    attention mass; then every decoded token adds one window pair: the bytes equal the analytic count with
    prompt_len at every step (a prompt ending on a chunk boundary, 64, and one that does not)."""
    W, lam, N = 8, 5, 21
    cfg = cfg_of(window=W, sparse=lam, scorer="snapkv", sinks=2)
    p = testing.make_params(cfg, 4, 2, D, dtype=torch.float64)
    q, k, v = testing.qkv(P + N, 4, 2, 1, D, torch.float64)
    st = LolaState()
    lola_chunked(q[:, :, :P], k[:, :, :P], v[:, :, :P], st, p)
    for t in (st.win_k, st.win_v, st.sp_k, st.sp_v):
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
    ws = cfg.window_start(P // W)
    assert st.win_k.shape[2] == P - ws and st.sp_k.shape[2] == lam + 2 and st.win_acc is None

    def analytic(n):
        return analytic_bytes(cfg, n, batch=1, query_heads=4, kv_heads=2, head_dim=D, feature_dim=p.feature_dim,
                              dtype=torch.float64, prompt_len=P)

    assert st.nbytes_by_tier() == analytic(P)
    for t in range(P, P + N):
        lola_decode(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], st, p)
        assert st.nbytes_by_tier() == analytic(t + 1)
    assert st.win_k.shape[2] == P + N - ws and st.sp_k.shape[2] == lam + 2
    boundary = analytic_bytes(replace(cfg, evict_at="boundary"), P + N, batch=1, query_heads=4, kv_heads=2,
                              head_dim=D, feature_dim=p.feature_dim, dtype=torch.float64)
    assert st.nbytes_by_tier()["window"] > boundary["window"]        # the sliding window would hold W..W+C pairs


def test_config_field():
    assert LolaConfig(fold=False, scorer="sink").evict_at == "boundary"
    with pytest.raises(UserError, match="unknown evict_at 'prefill'"):
        cfg_of(evict_at="prefill")
    with pytest.raises(UserError, match="applies to KV eviction"):
        LolaConfig(evict_at="prompt_end")                      # LoLA (and its base) fold: refused
    # the default is left out of the serialized config, so cell ids / resume keys hashed before it stay the same
    assert set(LolaConfig().to_dict()) == {"window", "sparse", "chunk", "feature_map", "scorer", "combine", "gqa",
                                           "sinks", "factor_init", "eps", "seed", "fold", "chunk_size"}
    assert set(LolaConfig(fold=False, scorer="sink").to_dict()) == set(LolaConfig().to_dict())
    assert cfg_of().to_dict()["evict_at"] == "prompt_end"


def test_no_feature_map_is_called():
    p = testing.make_params(cfg_of(window=8, sparse=5, scorer="attention", sinks=2), 4, 2, D, dtype=torch.float64)

    def boom(*a, **kw):
        raise AssertionError("a feature map was called under eviction")

    p.feature_map_q.forward = p.feature_map_k.forward = boom
    q, k, v = testing.qkv(41, 4, 2, 2, D, torch.float64)
    run(q, k, v, p, 30)
    lola_reference(q, k, v, p, prompt_len=30)


def test_replay_ranks_replays_the_one_compression():
    """The needle diagnostics' replay (diagnostics/replay.py) follows the prompt_end protocol: one selection at the
    end of the prompt, which leaves the sparse cache the fast path holds."""
    from lola_bench.diagnostics.replay import replay_ranks

    P = 45
    p = testing.make_params(cfg_of(window=4, sparse=3, scorer="key_norm", sinks=1, gqa="grouped"), 4, 2, D,
                            dtype=torch.float64)
    q, k, v = testing.qkv(P, 4, 2, 1, D, torch.float64)
    st = LolaState()
    lola_chunked(q, k, v, st, p)
    res = replay_ranks(k, v, p, [2, 30], full=True)
    assert res.boundaries == 1 and torch.equal(res.sparse_pos, st.sp_pos[0])
    ws = p.cfg.window_start(P // 4)
    assert res.ranks[30].boundary == ws and res.ranks[30].candidates == ws and res.ranks[30].keep == 4
