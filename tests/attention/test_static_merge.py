"""The steady chunk-boundary merge done in place on a static state (lola_bench/attention/static_merge.py) against
``common.evict_before`` through a LolaState: the same outputs at every decode step and the same final state, bit for
bit, over runs that cross several steady boundaries; which boundaries are steady; and that the merge reads no value
on the host (it runs on the meta device)."""

import pytest
import torch

from lola_bench.attention import testing
from lola_bench.attention.config import LolaConfig
from lola_bench.attention.decode import lola_decode
from lola_bench.attention.static_decode import StaticLolaState, static_decode
from lola_bench.attention.static_merge import static_merge, steady_reason, steps_to_steady
from tests.attention.test_static_decode import CASES, TOL, assert_same_state, setup, tok

N_DECODE = 40


@pytest.mark.parametrize("dtype,hq,hkv,b,P,kw", CASES)
def test_steady_merges_in_place_equal_evict_before(dtype, hq, hkv, b, P, kw):
    cfg = LolaConfig(**{"window": 6, "feature_map": "hedgehog", **kw})
    p, (q, k, v), st = setup(cfg, dtype, P, hq, hkv, b)
    sst = StaticLolaState.from_state(testing.clone_state(st), p)
    first = steps_to_steady(p, st.pos, st.pos - st.win_k.shape[2], st.sp_k.shape[2], N_DECODE)   # host arithmetic
    first_static = None
    for t in range(P, P + N_DECODE):
        want = lola_decode(tok(q, t), tok(k, t), tok(v, t), st, p)
        got = static_decode(tok(q, t), tok(k, t), tok(v, t), sst, steady=True)
        torch.testing.assert_close(got, want, **TOL[dtype], msg=f"step {t}")
        if sst.merges["static"] and first_static is None:
            first_static = t - P
    assert first == first_static            # steps_to_steady foresees the first steady boundary
    assert_same_state(sst.to_state(), st)
    assert int(sst.win_start) == sst.win_start_host and bool(sst.has_lin) == (st.n_folded > 0)
    if cfg.sparse < 50:          # the cache fills within the run: from then on every boundary is steady
        assert sst.merges["static"] >= 4, sst.merges
    else:                        # λ >= T: the cache never fills, every boundary goes through the copy
        assert sst.merges["static"] == 0 and sst.merges["copy"] >= 6


def test_steady_reason_names_the_boundaries_that_are_not():
    cfg = LolaConfig(window=6, sparse=5, sinks=2, gqa="grouped", feature_map="hedgehog")
    p, (q, k, v), st = setup(cfg, torch.float64, 13)
    sst = StaticLolaState.from_state(testing.clone_state(st), p)
    assert "holds 6 of 7 pairs" in steady_reason(sst, sst.win_start_host + cfg.chunk_size)   # not full yet
    for t in range(13, 13 + N_DECODE):
        static_decode(tok(q, t), tok(k, t), tok(v, t), sst, steady=True)
    assert sst.sp_n_host == sst.cap_s
    assert steady_reason(sst, sst.win_start_host + cfg.chunk_size) is None
    assert "not a chunk" in steady_reason(sst, sst.win_start_host + 1)
    capped = StaticLolaState.from_state(testing.clone_state(st), p, max_len=11)       # window slots 11 < 12
    assert "max_len" in steady_reason(capped, capped.win_start_host + cfg.chunk_size)
    sst.params = testing.make_params(LolaConfig(window=6, sparse=5, sinks=2, scorer="attention", gqa="grouped"),
                                     4, 2, 16)
    assert "attention mass" in steady_reason(sst, sst.win_start_host + cfg.chunk_size)


@pytest.mark.parametrize("kw", [dict(sparse=5, sinks=2, scorer="sre"), dict(sparse=0, sinks=0),
                                dict(sparse=4, sinks=1, fold=False, scorer="key_norm")])
def test_static_merge_reads_no_value_on_the_host(kw):
    """On the meta device no tensor has a value: a host read (``.item()``, ``bool()``, a data-dependent shape)
    raises. The merge gets through: nothing in it waits for the device (what a CUDA graph capture needs)."""
    cfg = LolaConfig(window=6, gqa="grouped", feature_map="hedgehog", **kw)
    pm = testing.make_params(cfg, 4, 2, 16, device="meta")
    meta = StaticLolaState(pm, 1, torch.float32, "meta")
    meta.sp_n_host, meta.win_start_host, meta.pos_host = meta.cap_s, 12, 12 + cfg.window + cfg.chunk_size
    assert steady_reason(meta, 12 + cfg.chunk_size) is None
    static_merge(meta)
    assert meta.k.device.type == "meta" and meta.k.shape[2] == meta.cap_s + meta.cap_w
