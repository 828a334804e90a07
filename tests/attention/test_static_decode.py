"""The static-capacity decode (lola_bench/attention/static_decode.py) against ``lola_decode``: outputs of every step
and the final state, over decode runs that cross several chunk boundaries; the masks, the step's independence from
host state, the capacities, and the configurations it refuses."""

import pytest
import torch

from lola_bench.attention import testing
from lola_bench.attention.chunked import lola_chunked
from lola_bench.attention.config import LolaConfig
from lola_bench.attention.decode import lola_decode
from lola_bench.attention.state import LolaState
from lola_bench.attention.static_decode import StaticLolaState, static_decode, static_step, static_unsupported
from lola_bench.errors import UserError

D = 16
N_DECODE = 40
TOL = {torch.float64: dict(atol=1e-12, rtol=1e-10), torch.float32: dict(atol=2e-6, rtol=2e-5)}
FIELDS = ("win_k", "win_v", "win_pos", "sp_k", "sp_v", "sp_pos", "H", "s")


def setup(cfg, dtype, P, hq=4, hkv=2, b=1, fm_perturb=True):
    p = testing.make_params(cfg, hq, hkv, D, dtype=dtype, perturb=fm_perturb)
    q, k, v = testing.qkv(P + N_DECODE, hq, hkv, b, D, dtype)
    st = LolaState()
    lola_chunked(q[:, :, :P], k[:, :, :P], v[:, :, :P], st, p)
    return p, (q, k, v), st


def tok(x, t):
    return x[:, :, t:t + 1]


def assert_same_state(got: LolaState, want: LolaState):
    assert (got.pos, got.n_folded) == (want.pos, want.n_folded)
    for f in FIELDS:
        a, b = getattr(got, f), getattr(want, f)
        assert a.shape == b.shape and torch.equal(a, b), f


# (dtype, hq, hkv, batch, prompt length P, LolaConfig fields); window 6 and chunk <= 6: >= 6 boundaries in 40 tokens
CASES = [
    (torch.float64, 4, 2, 1, 13, dict(gqa="grouped", sparse=5, sinks=2, combine="calibrated")),
    (torch.float64, 4, 2, 2, 16, dict(gqa="expanded", sparse=5, chunk=4, combine="calibrated")),   # P % chunk == 0
    (torch.float32, 4, 2, 1, 13, dict(gqa="grouped", sparse=5, sinks=2, combine="calibrated")),
    (torch.float32, 6, 2, 1, 11, dict(gqa="grouped", sparse=0, combine="calibrated")),             # lambda = 0
    (torch.float32, 6, 2, 1, 17, dict(gqa="expanded", sparse=3, sinks=3, chunk=3, combine="lola")),
    (torch.float64, 4, 2, 1, 9, dict(gqa="grouped", sparse=100, sinks=2, combine="calibrated")),   # lambda >= T
    (torch.float64, 4, 4, 1, 21, dict(gqa="grouped", sparse=4, combine="gated", scorer="random")),
    (torch.float64, 4, 2, 1, 7, dict(gqa="expanded", sparse=4, combine="lolcats", scorer="key_norm")),
    (torch.float64, 4, 2, 1, 14, dict(gqa="grouped", sparse=2, sinks=1, combine="normalized", scorer="sre_relative",
                                      feature_map="elu")),
    (torch.float32, 4, 2, 1, 19, dict(gqa="grouped", sparse=3, combine="lola", scorer="recency", feature_map="taylor")),
    (torch.float64, 4, 2, 1, 15, dict(gqa="expanded", sparse=3, sinks=2, fold=False, scorer="key_norm")),  # eviction
    (torch.float32, 4, 2, 1, 12, dict(gqa="grouped", sparse=0, sinks=2, fold=False, scorer="sink")),      # streaming
]


@pytest.mark.parametrize("dtype,hq,hkv,b,P,kw", CASES)
def test_static_decode_equals_lola_decode(dtype, hq, hkv, b, P, kw):
    """Every step's output and the final state (window, sparse cache, H, s, pos, n_folded) equal lola_decode's, with
    several chunk boundaries (eager merges) crossed; the linear part is in play wherever something was folded."""
    cfg = LolaConfig(**{"window": 6, "feature_map": "hedgehog", **kw})
    p, (q, k, v), st = setup(cfg, dtype, P, hq, hkv, b)
    sst = StaticLolaState.from_state(testing.clone_state(st), p)
    merges = 0
    for t in range(P, P + N_DECODE):
        want = lola_decode(tok(q, t), tok(k, t), tok(v, t), st, p)
        merges += sst.boundary() is not None
        got = static_decode(tok(q, t), tok(k, t), tok(v, t), sst)
        torch.testing.assert_close(got, want, **TOL[dtype], msg=f"step {t}")
    assert merges >= 6
    assert_same_state(sst.to_state(), st)
    lam = cfg.sparse
    assert (st.n_folded > 0) == (cfg.fold and lam < 50), st.n_folded       # lambda >= T: nothing folds
    assert bool(sst.has_lin) == (st.n_folded > 0) and int(sst.pos) == st.pos == sst.pos_host
    assert int(sst.sp_n) == st.sp_k.shape[2] and int(sst.win_start) == int(st.win_pos[0])


def test_conversion_is_exact_both_ways_and_refuses_an_empty_state():
    cfg = LolaConfig(window=6, sparse=5, sinks=2, combine="calibrated", gqa="grouped")
    p, _, st = setup(cfg, torch.float32, 23)
    sst = StaticLolaState.from_state(st, p)
    back = sst.to_state()
    assert_same_state(back, st)
    assert back.win_k.data_ptr() != sst.k.data_ptr()             # fresh tensors, not views of the buffers
    assert (sst.cap_s, sst.cap_w) == (7, 12) and sst.k.shape[2] == 19
    with pytest.raises(UserError, match="prefilled"):
        StaticLolaState.from_state(LolaState(), p)


def test_stale_slots_are_masked():
    """Slots past the sparse count and past the current token in the window hold garbage (large keys that would
    dominate the softmax): the outputs still equal lola_decode's. Counting every sparse slot valid (a mask bug)
    changes them, so this test sees such a bug."""
    cfg = LolaConfig(window=6, sparse=5, sinks=2, combine="calibrated", gqa="grouped")
    p, (q, k, v), st = setup(cfg, torch.float64, 9)                  # 9 < 6 + 5 + 2: the sparse cache is not full
    sst = StaticLolaState.from_state(testing.clone_state(st), p)
    ns, nw = sst.sp_n_host, sst.pos_host - sst.win_start_host
    assert ns < sst.cap_s and nw + 1 < sst.cap_w
    for buf in (sst.k, sst.v):
        buf[:, :, ns:sst.cap_s] = 30 * torch.randn_like(buf[:, :, ns:sst.cap_s])
        buf[:, :, sst.cap_s + nw:] = 30 * torch.randn_like(buf[:, :, sst.cap_s + nw:])
    bug = StaticLolaState.from_state(testing.clone_state(st), p)
    bug.k.copy_(sst.k)
    bug.v.copy_(sst.v)
    bug.sp_n.fill_(sst.cap_s)                                         # the mask bug: every sparse slot counted
    t = st.pos
    want = lola_decode(tok(q, t), tok(k, t), tok(v, t), st, p)
    torch.testing.assert_close(static_decode(tok(q, t), tok(k, t), tok(v, t), sst), want, atol=1e-12, rtol=1e-10)
    assert (static_decode(tok(q, t), tok(k, t), tok(v, t), bug) - want).abs().max() > 1e-3
    for u in range(t + 1, t + 25):                                    # and on, across boundaries
        want = lola_decode(tok(q, u), tok(k, u), tok(v, u), st, p)
        torch.testing.assert_close(static_decode(tok(q, u), tok(k, u), tok(v, u), sst), want, atol=1e-12,
                                   rtol=1e-10)


def test_step_reads_no_host_state():
    """What a CUDA graph replays: ``static_step`` called again and again with no host work in between (mirrors left
    stale, here set to nonsense) decodes the tokens of a chunk like lola_decode; on the meta device (no values on the
    host, so any read of a tensor value raises) the step runs, so it does not branch on tensor values."""
    cfg = LolaConfig(window=6, chunk=6, sparse=3, sinks=1, combine="calibrated", gqa="expanded")
    p, (q, k, v), st = setup(cfg, torch.float64, 25)                  # next boundary at 30
    sst = StaticLolaState.from_state(testing.clone_state(st), p)
    assert not sst.prepare()                                           # position 25 starts no chunk
    saved = (sst.pos_host, sst.win_start_host, sst.sp_n_host, sst.n_folded)
    sst.pos_host, sst.win_start_host, sst.sp_n_host, sst.n_folded = -10**6, 10**6, -1, -1
    for t in range(25, 30):
        want = lola_decode(tok(q, t), tok(k, t), tok(v, t), st, p)
        torch.testing.assert_close(static_step(tok(q, t), tok(k, t), tok(v, t), sst), want, atol=1e-12, rtol=1e-10)
    sst.pos_host, sst.win_start_host, sst.sp_n_host, sst.n_folded = saved
    sst.advance_host(5)
    assert sst.boundary() == 24 and int(sst.pos) == 30
    for t in range(30, 50):                                            # the host side picks up where the device is
        want = lola_decode(tok(q, t), tok(k, t), tok(v, t), st, p)
        torch.testing.assert_close(static_decode(tok(q, t), tok(k, t), tok(v, t), sst), want, atol=1e-12,
                                   rtol=1e-10)
    assert_same_state(sst.to_state(), st)

    pm = testing.make_params(LolaConfig(window=6, sparse=3, combine="lola", feature_map="hedgehog"), 4, 2, D,
                             device="meta")
    meta = StaticLolaState(pm, 1, torch.float32, "meta")
    out = static_step(*(torch.zeros(1, h, 1, D, device="meta") for h in (4, 2, 2)), meta)
    assert out.shape == (1, 4, 1, D) and out.device.type == "meta"
    with pytest.raises(RuntimeError, match="meta"):                   # what a host read of a value would do
        bool(meta.pos > 0)


def test_capacity_is_reached_and_enforced():
    """The window slots (window + chunk) fill exactly at the last token of a chunk; a state capped by max_len
    refuses a step past it instead of writing out of bounds."""
    cfg = LolaConfig(window=5, chunk=3, sparse=2, combine="calibrated")
    p, (q, k, v), st = setup(cfg, torch.float32, 10)
    sst = StaticLolaState.from_state(st, p)
    most = 0
    for t in range(10, 30):
        static_decode(tok(q, t), tok(k, t), tok(v, t), sst)
        most = max(most, sst.pos_host - sst.win_start_host)
    assert most == sst.cap_w == 8
    p2, (q, k, v), st2 = setup(cfg, torch.float32, 2)
    small = StaticLolaState.from_state(st2, p2, max_len=5)             # a sequence of at most 5 tokens
    assert (small.cap_s, small.cap_w) == (2, 5) and small.k.shape[2] == 7
    for t in range(2, 5):
        static_decode(tok(q, t), tok(k, t), tok(v, t), small)
    with pytest.raises(UserError, match="capacity"):
        static_decode(tok(q, 5), tok(k, 5), tok(v, 5), small)
    with pytest.raises(UserError, match="capacity"):
        StaticLolaState.from_state(sst.to_state(), p, max_len=4)     # 5+ window pairs do not fit in 4 slots


@pytest.mark.parametrize("kw,reason", [
    (dict(fold=False, scorer="key_norm", evict_at="prompt_end"), "prompt_end"),
    (dict(fold=False, scorer="attention"), "attention mass"),
    (dict(fold=False, scorer="snapkv"), "attention mass"),
])
def test_unsupported_configurations_are_refused_with_a_reason(kw, reason):
    cfg = LolaConfig(window=6, sparse=3, **kw)
    p, _, st = setup(cfg, torch.float32, 20)
    assert reason in static_unsupported(p)
    with pytest.raises(UserError, match=reason):
        StaticLolaState.from_state(st, p)
    assert static_unsupported(testing.make_params(LolaConfig(window=6, sparse=3), 4, 2, D)) is None
