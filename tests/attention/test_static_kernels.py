"""The Triton decode over a static state (kernels.static_step_triton, decode.static_decode_attention) under the Triton
interpreter on CPU: step by step and in final state it equals the torch static step, ``lola_decode`` and the Triton
decode of a LolaState; its launches are the same at every position (what a CUDA graph replays) and it follows the
lengths in device memory, not any host value; LolaAttention and gpu_bench's graphed row name what ran. Set-up in
interpreted.py (TRITON_INTERPRET=1 around the imports, a subprocess when Triton was imported compiled earlier in this
process). The interpreter never captures a CUDA graph: the capture and replay are GPU-only (gpu_bench's model
section)."""

import pytest
import torch

from tests.attention import interpreted

_T = interpreted.load()
INTERPRETED = _T.interpreted
K, khost, kmerge, kdecode = _T.K, _T._host, _T.merge, _T.decode

from lola_bench.attention import testing  # noqa: E402
from lola_bench.attention.chunked import lola_chunked  # noqa: E402
from lola_bench.attention.config import LolaConfig  # noqa: E402
from lola_bench.attention.decode import lola_decode  # noqa: E402
from lola_bench.attention.state import LolaState  # noqa: E402
from lola_bench.attention.static_decode import StaticLolaState, static_attention, static_decode  # noqa: E402

pytestmark = pytest.mark.triton

_interpret = interpreted.interpret_fixture(INTERPRETED, "test_static_kernels_in_fresh_process")

D = 16
FIELDS = ("win_k", "win_v", "win_pos", "sp_k", "sp_v", "sp_pos")
TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.float16: dict(atol=3e-3, rtol=3e-3)}
# against the Triton decode of a LolaState: the same kernels over the same keys; only the merge of the splits sums
# over more (empty) partials, which may reorder a reduction (a rounding of the fp32 sums, one ulp of a 16-bit output)
SAME = {torch.float32: dict(atol=1e-6, rtol=1e-5), torch.float16: dict(atol=1e-3, rtol=1e-3)}


def test_static_kernels_in_fresh_process():
    interpreted.run_in_fresh_process(INTERPRETED, __file__)


def triton_evict(st: LolaState, p, ws: int) -> None:
    """The chunk-boundary merge as the Triton decode runs it (gpu_bench's boundary_evict)."""
    khost.ensure_contiguous_state(st)
    kmerge.evict_before_triton(st, p, ws)


def tok(x, t):
    return x[:, :, t:t + 1]


def prefilled(cfg, dtype, P, n, hq=4, hkv=2, b=1):
    p = testing.make_params(cfg, hq, hkv, D, dtype=dtype)
    q, k, v = testing.qkv(P + n, hq, hkv, b, D, dtype)
    st = LolaState()
    lola_chunked(q[:, :, :P], k[:, :, :P], v[:, :, :P], st, p)
    return p, (q, k, v), st


def same_state(got: LolaState, want: LolaState, **tol):
    assert (got.pos, got.n_folded) == (want.pos, want.n_folded)
    for f in FIELDS:
        a, b = getattr(got, f), getattr(want, f)
        assert a.shape == b.shape and torch.equal(a, b), f
    for f in ("H", "s"):
        torch.testing.assert_close(getattr(got, f), getattr(want, f), **(tol or dict(atol=0, rtol=0)), msg=f)


# (dtype, hq, hkv, batch, prompt P, SPLIT, LolaConfig fields); window 6, chunk <= 6: >= 3 boundaries in 20 tokens.
# SPLIT 8 spreads the 18 to 21 slots (114 for lambda = 100) over 3+ programs, the last ones empty while few keys
# are live.
N = 20
CASES = [
    (torch.float32, 4, 2, 1, 13, 64, dict(gqa="grouped", sparse=5, sinks=2, combine="calibrated",
                                          feature_map="hedgehog")),                       # learned phi(q), sinks
    (torch.float16, 4, 2, 2, 16, 8, dict(gqa="expanded", sparse=5, chunk=4, combine="lola",
                                         feature_map="hedgehog-identity")),               # P % chunk == 0, batch 2
    (torch.float32, 6, 2, 1, 11, 8, dict(gqa="grouped", sparse=0, combine="gated", feature_map="elu")),  # lambda 0
    (torch.float32, 4, 2, 1, 9, 8, dict(gqa="expanded", sparse=100, sinks=2, combine="normalized",
                                        feature_map="relu")),        # lambda >= T (a readout used would show)
    (torch.float16, 4, 2, 1, 17, 8, dict(gqa="grouped", sparse=3, sinks=3, chunk=3, combine="lolcats",
                                         feature_map="hedgehog", scorer="recency")),
    (torch.float32, 4, 4, 1, 7, 8, dict(gqa="grouped", sparse=4, combine="calibrated", feature_map="hedgehog-identity",
                                        scorer="key_norm")),
]


@pytest.mark.parametrize("dtype,hq,hkv,b,P,split,kw", CASES)
def test_triton_static_step_equals_static_step_and_lola_decode(monkeypatch, dtype, hq, hkv, b, P, split, kw):
    """Every step's output and the final state, across several chunk boundaries: those of the Triton decode of a
    LolaState (the same kernels over the same keys in the same order: outputs up to the rounding of the split merge,
    the state bit for bit: the same merge kernel), and within rounding those of the torch static step and
    lola_decode."""
    monkeypatch.setattr(kdecode, "SPLIT", split)
    cfg = LolaConfig(**{"window": 6, **kw})
    p, (q, k, v), st = prefilled(cfg, dtype, P, N, hq, hkv, b)
    st_k, st_t = testing.clone_state(st), testing.clone_state(st)
    sst = StaticLolaState.from_state(testing.clone_state(st), p)
    sst_t = StaticLolaState.from_state(testing.clone_state(st), p)
    assert K.unsupported_reason(q, p) is None
    merges = 0
    for t in range(P, P + N):
        args = (tok(q, t), tok(k, t), tok(v, t))
        want_k = K.lola_decode_triton(*args, st_k, p)
        want_t = lola_decode(*args, st_t, p)
        want_s = static_decode(*args, sst_t)
        merges += sst.boundary() is not None
        got = static_decode(*args, sst, triton_evict, K.static_step_triton)
        assert not got.isnan().any() and got.dtype == dtype
        torch.testing.assert_close(got, want_k, **SAME[dtype], msg=f"step {t}")
        torch.testing.assert_close(got, want_s, **TOL[dtype], msg=f"step {t}")
        torch.testing.assert_close(got, want_t, **TOL[dtype], msg=f"step {t}")
    assert merges >= 3
    same_state(sst.to_state(), st_k)
    same_state(sst.to_state(), st_t, atol=1e-4, rtol=1e-4)
    assert (st_k.n_folded > 0) == (cfg.sparse < P) and bool(sst.has_lin) == (st_k.n_folded > 0)
    assert int(sst.pos) == sst.pos_host == P + N and int(sst.sp_n) == st_k.sp_k.shape[2]


class _Launches:
    """Stands in for a kernel: records each launch's grid and arguments (tensors by dtype, shape and strides;
    numbers by value), then runs it."""

    def __init__(self, fn, log: list):
        self.fn, self.log = fn, log

    def __getitem__(self, grid):
        def launch(*args, **kw):
            sig = tuple((a.dtype, tuple(a.shape), a.stride()) if isinstance(a, torch.Tensor) else a
                        for a in (*args, *kw.values()))
            ptrs = [a.data_ptr() for a in args if isinstance(a, torch.Tensor)]
            self.log.append((self.fn.__name__, grid, sig, ptrs, kw))
            return self.fn[grid](*args, **kw)
        return launch


@pytest.fixture
def launches(monkeypatch):
    log: list = []
    monkeypatch.setattr(kdecode, "SPLIT", 8)
    for name in ("_partial_kernel", "_decode_kernel"):
        monkeypatch.setattr(kdecode, name, _Launches(getattr(kdecode, name), log))
    return log


def test_launches_are_the_same_at_every_position(launches):
    """What a CUDA graph replays: over steps that cross two chunk boundaries (the live keys go from 10 to 18 of 19
    slots, the sparse count and "anything folded" change), every launch has the same grid and the same arguments,
    and reads the state's own buffers (the count buffer and the slot buffers are among its pointers)."""
    cfg = LolaConfig(window=6, sparse=5, sinks=2, combine="calibrated", feature_map="hedgehog", gqa="grouped")
    p, (q, k, v), st = prefilled(cfg, torch.float32, 9, 10)
    sst = StaticLolaState.from_state(st, p)
    assert not bool(sst.has_lin)                        # nothing folded until the boundary at 18
    for t in range(9, 19):
        static_decode(tok(q, t), tok(k, t), tok(v, t), sst, triton_evict, K.static_step_triton)
    assert bool(sst.has_lin) and len(launches) == 20
    for name in ("_partial_kernel", "_decode_kernel"):
        runs = [x for x in launches if x[0] == name]
        assert all(x[1:3] == runs[0][1:3] for x in runs), name
    partial, decode = launches[0], launches[1]
    assert partial[1] == (4, 3)                         # batch x heads, ceil(19 slots / 8)
    assert {sst.counts.data_ptr(), sst.k.data_ptr(), sst.v.data_ptr()} <= set(partial[3])
    assert {sst.has_lin.data_ptr(), sst.H.data_ptr(), sst.s.data_ptr()} <= set(decode[3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernels_follow_the_device_counts_not_the_host(launches, dtype):
    """Change sp_n, pos, win_start and has_lin on the device between calls whose launch arguments are identical (the
    host mirrors set to nonsense, and the recorded launches equal): each output follows the device values (equals
    the torch static attention over the changed counts, and differs from the output before the change)."""
    cfg = LolaConfig(window=6, sparse=5, sinks=2, combine="calibrated", feature_map="hedgehog", gqa="expanded")
    p, (q, k, v), st = prefilled(cfg, dtype, 27, 1)
    sst = StaticLolaState.from_state(st, p)
    assert sst.sp_n_host == 7 and sst.pos_host - sst.win_start_host == 9 and bool(sst.has_lin)
    K.static_step_triton(tok(q, 27), tok(k, 27), tok(v, 27), sst)       # the new pair in slot cap_s + 9
    sst.pos.sub_(1)                                                     # back to "written, not yet advanced"
    sst.pos_host, sst.win_start_host, sst.sp_n_host, sst.n_folded = -10**6, 10**6, -1, -1
    q1 = tok(q, 27)
    base = kdecode.static_decode_attention(q1, sst)
    torch.testing.assert_close(base.float(), static_attention(q1, sst).float(), **TOL[dtype])
    launches.clear()
    changes = [lambda s: s.sp_n.sub_(3), lambda s: s.pos.sub_(2), lambda s: s.win_start.add_(1),
               lambda s: s.has_lin.fill_(False), lambda s: s.sp_n.fill_(0)]
    for change in changes:
        before = kdecode.static_decode_attention(q1, sst)
        change(sst)
        got = kdecode.static_decode_attention(q1, sst)
        torch.testing.assert_close(got.float(), static_attention(q1, sst).float(), **TOL[dtype])
        assert (got.float() - before.float()).abs().max() > 1e-2
    for name in ("_partial_kernel", "_decode_kernel"):
        runs = [x for x in launches if x[0] == name]
        assert len(runs) == 2 * len(changes) and all(x[1:3] == runs[0][1:3] for x in runs), name


def test_layer_and_graphed_row_run_and_name_the_static_implementation(launches):
    """LolaAttention on a StaticLolaCache runs the Triton step where the kernels run (kernels=triton here, under the
    interpreter: the static launches happen, one pair per layer) and names it ``triton (static)``; ``torch (static)``
    with kernels=torch (no launch); a configuration the kernels do not cover falls back to the torch step and says
    why. gpu_bench's graphed row with use_kernels decodes through the Triton step (its launches, every step),
    generates what generate() does, and records it."""
    from lola_bench.evals.graphed_decode import lola_static_decode
    from lola_bench.models.loading import random_model
    from lola_bench.models.patch import lola_modules, new_cache, patch_model, unpatch_model
    from lola_bench.models.static_cache import to_static_cache

    model = random_model("tiny", torch.float32, seed=1, initializer_range=0.5)
    ids = torch.randint(100, 4000, (1, 19), generator=torch.Generator().manual_seed(0))
    calls = {}
    for kernels, kw in [("triton", {}), ("torch", {}), ("triton", dict(fold=False, scorer="key_norm"))]:
        patch_model(model, LolaConfig(window=8, sparse=4, sinks=1, combine="calibrated", **kw), kernels="torch")
        try:
            cache = new_cache(model)
            model(ids, cache=cache, use_cache=True)
            scache = to_static_cache(model, cache)
            for m in lola_modules(model):
                m.kernels = kernels
            scache.prepare()
            launches.clear()
            model(ids[:, -1:], cache=scache, position_ids=torch.tensor([[19]]), use_cache=True)
            calls[kernels, bool(kw)] = set().union(*(m.calls for m in lola_modules(model))), len(launches)
        finally:
            unpatch_model(model)
    layers = model.config.num_hidden_layers
    assert calls["triton", False] == ({("prefill", "torch"), ("decode", "triton (static)")}, 2 * layers)
    assert calls["torch", False] == ({("prefill", "torch"), ("decode", "torch (static)")}, 0)
    assert ("decode", "torch (static; fallback: eviction has no kernel)") in calls["triton", True][0]
    assert calls["triton", True][1] == 0
    launches.clear()

    patch_model(model, LolaConfig(window=8, sparse=4, sinks=1, combine="calibrated", feature_map="hedgehog"))
    try:
        row, toks = lola_static_decode(model, ids, 9, "cpu", n_warm=2, record=True, use_kernels=True)
        want = model.generate(ids, max_new_tokens=12, do_sample=False)[0, 19:].tolist()
    finally:
        unpatch_model(model)
    assert len(set(want)) > 3, "test model too degenerate to compare"
    assert toks == want and row["boundary_merges"] >= 1
    assert len(launches) == 2 * layers * (2 + 9) and all(x[4].get("DEV_LEN", x[4].get("DEV_LIN")) for x in launches)
    assert row["attention"] == "triton (static)", row
    assert row["merge"].startswith("triton") and row["impl"] == "static cache, eager"
