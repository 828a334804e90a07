"""The batched prefill (selection pass, then many chunks' attention at once) against the chunk loop and the reference:
outputs and the whole final state, on awkward shapes, in float32 and float64."""

import pytest
import torch

from lola_bench.attention import batched, chunked, testing
from lola_bench.attention.batched import lola_batched
from lola_bench.attention.chunked import lola_chunked, lola_chunked_loop
from lola_bench.attention.config import LolaConfig
from lola_bench.attention.decode import lola_decode
from lola_bench.attention.reference import lola_reference
from lola_bench.attention.state import LolaState

D = 16


def assert_same_state(a: LolaState, b: LolaState, rtol: float) -> None:
    assert (a.pos, a.n_folded) == (b.pos, b.n_folded)
    assert torch.equal(a.win_pos, b.win_pos) and torch.equal(a.sp_pos, b.sp_pos)
    for name in ("win_k", "win_v", "sp_k", "sp_v"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    if a.H.numel():
        testing.assert_close(a.H, b.H, rtol, "H")
        testing.assert_close(a.s, b.s, rtol, "s")
    assert a.H.shape == b.H.shape and a.s.shape == b.s.shape
    assert a.nbytes_by_tier() == b.nbytes_by_tier()


CONFIGS = [
    dict(window=8, sparse=5),                                   # the common case, several folds
    dict(window=8, sparse=0),                                   # lambda = 0: window + linear only
    dict(window=8, sparse=500),                                 # lambda >= T: exact softmax throughout
    dict(window=8, sparse=6, sinks=3, combine="lolcats"),       # pinned sinks
    dict(window=8, sparse=7, chunk=5, combine="gated"),         # chunk != window
    dict(window=6, sparse=4, chunk=1, combine="normalized"),    # token-level window
    dict(window=4, sparse=9, chunk=7, sinks=2, combine="lola"),  # chunk > window
    dict(window=8, sparse=5, scorer="key_norm", feature_map="elu"),
    dict(window=8, sparse=5, scorer="random", feature_map="taylor"),
    dict(window=8, sparse=5, scorer="recency"),
    dict(window=8, sparse=5, scorer="sink", sinks=2),
    dict(window=8, sparse=5, scorer="key_norm", fold=False),    # eviction: dropped, not folded
    dict(window=8, sparse=0, scorer="random", fold=False, sinks=4),
]


@pytest.mark.parametrize("kw", CONFIGS)
@pytest.mark.parametrize("gqa", ["grouped", "expanded"])
@pytest.mark.parametrize("L", [1, 37, 101])
def test_batched_equals_loop_fp32(kw, gqa, L):
    cfg = LolaConfig(gqa=gqa, **{"feature_map": "hedgehog", "combine": "calibrated", **kw})
    p = testing.make_params(cfg, 6, 2, D)
    q, k, v = testing.qkv(L, 6, 2, 2, D)
    st_b, st_l = LolaState(), LolaState()
    testing.assert_close(lola_batched(q, k, v, st_b, p), lola_chunked_loop(q, k, v, st_l, p), 2e-6)
    assert_same_state(st_b, st_l, 2e-6)


@pytest.mark.parametrize("kw", CONFIGS[:7])
@pytest.mark.parametrize("gqa", ["grouped", "expanded"])
@pytest.mark.parametrize("block", [1, 1 << 20])
def test_batched_continuation_and_decode_equal_loop(kw, gqa, block, monkeypatch):
    """Unaligned prefill blocks continuing a state (the exact prefix shortcut only applies from position 0), one
    chunk per attention step or many (sparse caches of different sizes padded while the cache grows), then decode."""
    monkeypatch.setattr(batched, "BLOCK_ELEMS", block)
    cfg = LolaConfig(gqa=gqa, **{"feature_map": "hedgehog", "combine": "calibrated", **kw})
    p = testing.make_params(cfg, 6, 3, D, dtype=torch.float64)
    q, k, v = testing.qkv(90, 6, 3, 2, D, dtype=torch.float64)
    continuation_then_decode(p, q, k, v, [0, 3, 22, 23, 61, 80], 1e-12)


def continuation_then_decode(p, q, k, v, cuts: list[int], tol: float) -> None:
    """Prefill blocks [cuts[i], cuts[i+1]) continuing one state through ``lola_batched`` and another through the chunk
    loop, then decode one token at a time to the end of q: outputs and states equal within ``tol`` at every step."""
    st_b, st_l = LolaState(), LolaState()
    for a, b in zip(cuts, cuts[1:]):
        args = (q[:, :, a:b], k[:, :, a:b], v[:, :, a:b])
        testing.assert_close(lola_batched(*args, st_b, p), lola_chunked_loop(*args, st_l, p), tol)
        assert_same_state(st_b, st_l, tol)
    for t in range(cuts[-1], q.shape[2]):
        args = (q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1])
        testing.assert_close(lola_decode(*args, st_b, p), lola_decode(*args, st_l, p), tol)
    assert_same_state(st_b, st_l, tol)


@pytest.mark.parametrize("gqa", ["grouped", "expanded"])
@pytest.mark.parametrize("block", [1, 1 << 20])
def test_batched_matches_reference_then_decode(gqa, block, monkeypatch):
    """float64 against the specification: outputs, sparse positions, H, s; then decode after the batched prefill
    equals one long prefill."""
    monkeypatch.setattr(batched, "BLOCK_ELEMS", block)
    cfg = LolaConfig(window=8, sparse=6, sinks=2, gqa=gqa, feature_map="hedgehog", combine="lola")
    p = testing.make_params(cfg, 4, 2, D, dtype=torch.float64)
    q, k, v = testing.qkv(77, 4, 2, 2, D, dtype=torch.float64)
    ref = lola_reference(q, k, v, p)
    st = LolaState()
    testing.assert_close(lola_batched(q, k, v, st, p), ref.out, 1e-12)
    assert torch.equal(st.sp_pos, ref.sparse_pos)
    testing.assert_close(st.H, ref.H, 1e-12, "H")
    st2 = LolaState()
    outs = [lola_batched(q[:, :, :41], k[:, :, :41], v[:, :, :41], st2, p)]
    outs += [lola_decode(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], st2, p) for t in range(41, 77)]
    testing.assert_close(torch.cat(outs, 2), ref.out, 1e-12)
    assert torch.equal(st2.sp_pos, ref.sparse_pos)


def test_prefill_dispatch(monkeypatch):
    """lola_chunked runs the batched path unless the scorer reads attention mass (which feeds the next boundary)."""
    calls = []
    monkeypatch.setattr(chunked, "lola_batched", lambda *a: calls.append("batched") or lola_batched(*a))
    monkeypatch.setattr(chunked, "lola_chunked_loop", lambda *a: calls.append("loop") or lola_chunked_loop(*a))
    q, k, v = testing.qkv(30)
    for scorer, want in [("sre", "batched"), ("attention", "loop"), ("snapkv", "loop")]:
        cfg = LolaConfig(window=4, sparse=3, scorer=scorer, fold=scorer == "sre")
        lola_chunked(q, k, v, LolaState(), testing.make_params(cfg))
        assert calls.pop() == want
    with pytest.raises(ValueError, match="attention mass"):
        lola_batched(q, k, v, LolaState(), testing.make_params(LolaConfig(window=4, sparse=3, scorer="attention")))


@pytest.mark.parametrize("gqa", ["grouped", "expanded"])
@pytest.mark.parametrize("kw", [dict(window=8, sparse=5, sinks=2), dict(window=8, sparse=7, chunk=5),
                                dict(window=8, sparse=5, scorer="key_norm", fold=False)])
def test_selection_slots_hold_the_sparse_cache(gqa, kw):
    """The slots the selection pass carries from boundary to boundary (leaving pairs written into freed slots, phi(k)
    computed once per pair) hold, at the final cache's slots, exactly the final cache's keys, values and positions,
    and phi(k) equal to phi recomputed from those keys."""
    from lola_bench.attention.common import take_rows
    from lola_bench.attention.scorers import expand_heads
    from lola_bench.attention.selection import select_all

    cfg = LolaConfig(gqa=gqa, **{"feature_map": "hedgehog", **kw})
    p = testing.make_params(cfg, 6, 2, D, dtype=torch.float64)
    _, k, v = testing.qkv(97, 6, 2, 2, D, dtype=torch.float64)
    st, ref = LolaState(), LolaState()
    batched.ensure_state(st, k, p)
    tab = select_all(k[:, :, :40], v[:, :, :40], st, p)          # a continuation too: slots made again
    tab = select_all(k[:, :, 40:], v[:, :, 40:], st, p)
    lola_chunked_loop(*(testing.qkv(97, 6, 2, 2, D, dtype=torch.float64)[0], k, v), ref, p)
    assert_same_state(st, ref, 1e-12)
    sl, slot = tab.slots, tab.sp_slot
    assert torch.equal(take_rows(sl.k, slot), st.sp_k) and torch.equal(take_rows(sl.v, slot), st.sp_v)
    assert torch.equal(sl.pos.gather(2, slot), st.sp_pos)
    if cfg.fold:
        recomputed = p.feature_map_k(expand_heads(st.sp_k, p.group))
        testing.assert_close(take_rows(sl.phi, expand_heads(slot, p.group)), recomputed, 1e-14)
    else:
        assert sl.phi is None


@pytest.mark.parametrize("kw", [CONFIGS[0], CONFIGS[3], CONFIGS[4], CONFIGS[11]])
@pytest.mark.parametrize("gqa", ["grouped", "expanded"])
def test_prefill_cut_into_blocks_within_the_state_budget_equals_one_block(monkeypatch, kw, gqa):
    """lola_chunked cuts a long call into blocks of whole chunks so the per-chunk linear states it holds fit
    STATE_BUDGET_BYTES; the blocks leave the same outputs and state as one batched call."""
    cfg = LolaConfig(gqa=gqa, **{"feature_map": "hedgehog", "combine": "calibrated", **kw})
    p = testing.make_params(cfg, 6, 2, D)
    q, k, v = testing.qkv(101, 6, 2, 2, D)
    st_one, st_blocks = LolaState(), LolaState()
    one = lola_batched(q, k, v, st_one, p)
    calls = []
    real = chunked.lola_batched

    def spy(q, k, v, state, params):
        calls.append((state.pos, q.shape[2]))
        return real(q, k, v, state, params)

    per_chunk = 2 * 6 * p.feature_dim * (D + 1) * 4
    monkeypatch.setattr(chunked, "STATE_BUDGET_BYTES", 2 * per_chunk)       # two chunks per block
    monkeypatch.setattr(chunked, "lola_batched", spy)
    testing.assert_close(lola_chunked(q, k, v, st_blocks, p), one, 2e-6)
    assert_same_state(st_blocks, st_one, 2e-6)
    C = cfg.chunk_size
    assert len(calls) > 1 and all(n <= 2 * C for _, n in calls)
    assert all((pos + n) % C == 0 for pos, n in calls[:-1])                # blocks end on chunk boundaries


@pytest.mark.parametrize("combine", ["calibrated", "lola"])
@pytest.mark.parametrize("gqa", ["grouped", "expanded"])
@pytest.mark.parametrize("kw", [dict(window=8, sparse=5), dict(window=4, sparse=9, chunk=7, sinks=2)])
def test_fused_cpu_blocks_equal_the_explicit_logits(combine, gqa, kw, monkeypatch):
    """The CPU block path's fused flash-attention call (normalized outputs + log-sum-exp, the combine shifted by the
    log-sum-exp) gives what the explicit logits give (float64, tight), in blocks of one chunk and of many, and runs
    when it says it does; formulas that need the max shift (gated, lolcats, normalized) keep the explicit logits."""
    calls = []
    real = batched._FLASH_CPU
    monkeypatch.setattr(batched, "_FLASH_CPU", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = LolaConfig(gqa=gqa, feature_map="hedgehog", combine=combine, **kw)
    p = testing.make_params(cfg, 6, 2, D, dtype=torch.float64)
    q, k, v = testing.qkv(101, 6, 2, 2, D, dtype=torch.float64)
    for block in (1, 1 << 20):
        monkeypatch.setattr(batched, "BLOCK_ELEMS", block)
        outs = {}
        for fused in ("1", "0"):
            monkeypatch.setenv("LOLA_CPU_FUSED", fused)
            n = len(calls)
            st = LolaState()
            outs[fused] = (lola_batched(q, k, v, st, p), st)
            assert (len(calls) > n) == (fused == "1")
        testing.assert_close(outs["1"][0], outs["0"][0], 1e-12)
        assert_same_state(outs["1"][1], outs["0"][1], 1e-12)
    monkeypatch.setenv("LOLA_CPU_FUSED", "1")
    assert not batched.use_fused(q, testing.make_params(LolaConfig(combine="gated"), 6, 2, D, dtype=torch.float64))
