"""The step-parallel merge ($LOLA_MERGE=stepwise, kernels/merge_steps.py) under the Triton interpreter on CPU: the same
selections, outputs and final state as the persistent merge kernel, the torch paths and the reference, on awkward
shapes. Set-up in interpreted.py (TRITON_INTERPRET=1 around the imports, a subprocess when Triton was imported compiled
earlier in this process). The interpreter never captures CUDA graphs: the graph replay is GPU-only
(benchmarks/gpu_bench, section merge_step, checks the replays against the persistent kernel)."""

import pytest
import torch

from tests.attention import interpreted

_T = interpreted.load()
INTERPRETED = _T.interpreted
K, khost, kjit, kmerge, ksteps, kdecode, kprefill = (_T.K, _T._host, _T._jit, _T.merge, _T.merge_steps,
                                                    _T.decode, _T.prefill)

from lola_bench.attention.chunked import lola_chunked  # noqa: E402
from lola_bench.attention.common import evict_before, split_topk  # noqa: E402
from lola_bench.attention.config import LolaConfig  # noqa: E402
from lola_bench.attention.decode import lola_decode  # noqa: E402
from lola_bench.attention.reference import lola_reference  # noqa: E402
from lola_bench.attention.state import LolaState  # noqa: E402
from lola_bench.attention.testing import clone_state, make_params, qkv, random_state  # noqa: E402

pytestmark = pytest.mark.triton


_interpret = interpreted.interpret_fixture(INTERPRETED, "test_merge_steps_in_fresh_process")


def test_merge_steps_in_fresh_process():
    interpreted.run_in_fresh_process(INTERPRETED, __file__)


@pytest.fixture
def stepwise_only(monkeypatch):
    """$LOLA_MERGE=stepwise, and the persistent merge kernel fails the test if anything still launches it."""
    monkeypatch.setenv("LOLA_MERGE", "stepwise")
    monkeypatch.setattr(kmerge, "_merge_kernel", None)


def _states_equal(a: LolaState, b: LolaState, atol=0.0, rtol=0.0):
    assert a.pos == b.pos and a.n_folded == b.n_folded
    assert torch.equal(a.sp_pos, b.sp_pos) and torch.equal(a.win_pos, b.win_pos)
    for name in ("sp_k", "sp_v", "win_k", "win_v"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    torch.testing.assert_close(a.H, b.H, atol=atol, rtol=rtol)
    torch.testing.assert_close(a.s, b.s, atol=atol, rtol=rtol)


@pytest.mark.parametrize("L,window,sparse,sinks,fm,gqa,chunk,scorer,dtype", [
    (63, 16, 8, 0, "hedgehog-identity", "grouped", None, "sre", torch.float32),   # odd length, GQA grouped
    (65, 16, 8, 2, "hedgehog", "expanded", None, "sre", torch.float16),          # learned phi, fp16, sinks
    (61, 8, 6, 3, "elu", "grouped", 5, "sre", torch.float32),                    # chunk < window, sinks
    (63, 16, 100, 0, "relu", "grouped", None, "sre", torch.float32),             # lambda >= T: nothing folded
    (41, 8, 5, 0, "hedgehog-identity", "grouped", None, "key_norm", torch.float32),  # precomputed scores
])
def test_stepwise_prefill_matches_persistent_and_reference(monkeypatch, L, window, sparse, sinks, fm, gqa, chunk,
                                                           scorer, dtype):
    """Same outputs and state, bit for bit, as the persistent merge kernel (same arithmetic in the same order), and
    the reference's kept positions, outputs and linear state."""
    cfg = LolaConfig(window=window, sparse=sparse, sinks=sinks, feature_map=fm, gqa=gqa, chunk=chunk, scorer=scorer)
    p = make_params(cfg, dtype=dtype)
    q, k, v = qkv(L, dtype=dtype)
    monkeypatch.setenv("LOLA_MERGE", "persistent")
    st_p = LolaState()
    out_p = K.lola_chunked_triton(q, k, v, st_p, p)
    monkeypatch.setenv("LOLA_MERGE", "stepwise")
    monkeypatch.setattr(kmerge, "_merge_kernel", None)
    st = LolaState()
    out = K.lola_chunked_triton(q, k, v, st, p)
    assert not out.isnan().any()
    assert torch.equal(out, out_p)
    _states_equal(st, st_p)
    ref = lola_reference(q, k, v, p)
    tol = 2e-5 if dtype == torch.float32 else 4e-3
    torch.testing.assert_close(out.float(), ref.out.float(), atol=tol, rtol=max(tol, 1e-4))
    assert torch.equal(st.sp_pos, ref.sparse_pos)
    torch.testing.assert_close(st.H, ref.H, atol=max(tol, 1e-4), rtol=max(tol, 1e-4))
    torch.testing.assert_close(st.s, ref.s, atol=max(tol, 1e-4), rtol=max(tol, 1e-4))
    if sparse < L - window:
        assert st.n_folded > 0


@pytest.mark.parametrize("sparse,sinks,fm", [(6, 0, "hedgehog-identity"), (0, 2, "elu"), (0, 0, "relu")])
def test_stepwise_continuation_then_decode_matches_torch(stepwise_only, sparse, sinks, fm):
    """A state continued by a second prefill (non-empty cache and window, mid-chunk starts), then decode steps across
    a chunk boundary (the one-step merge of evict_before_triton), lambda = 0 included: the torch paths' outputs and
    state throughout, and the reference's kept positions at the end."""
    cfg = LolaConfig(window=8, sparse=sparse, sinks=sinks, feature_map=fm)
    p = make_params(cfg)
    q, k, v = qkv(45)
    st, st_ref = LolaState(), LolaState()
    for a, b in [(0, 21), (21, 38)]:
        out = K.lola_chunked_triton(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], st, p)
        torch.testing.assert_close(out, lola_chunked(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], st_ref, p),
                                   atol=2e-5, rtol=1e-4)
        _states_equal(st, st_ref, atol=1e-5, rtol=1e-5)
    for t in range(38, 45):  # crosses the chunk boundary at 40
        sl = slice(t, t + 1)
        out = K.lola_decode_triton(q[:, :, sl], k[:, :, sl], v[:, :, sl], st, p)
        torch.testing.assert_close(out, lola_decode(q[:, :, sl], k[:, :, sl], v[:, :, sl], st_ref, p),
                                   atol=2e-5, rtol=1e-4)
    _states_equal(st, st_ref, atol=1e-5, rtol=1e-5)
    ref = lola_reference(q, k, v, p)
    assert torch.equal(st.sp_pos, ref.sparse_pos)
    torch.testing.assert_close(st.H, ref.H, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scorer,sparse,sinks,ns", [("sre", 16, 0, 16), ("sre", 0, 0, 0), ("sre", 40, 0, 16),
                                                    ("recency", 8, 3, 11)])
def test_stepwise_one_step_merge_matches_evict_before(stepwise_only, scorer, sparse, sinks, ns):
    """One chunk boundary on a random state (grouped, 2 query heads per storage head): lambda = 0 (fold all),
    lambda > candidates (keep all), pinned sinks; the same kept pairs and (H, s) as the torch eviction."""
    cfg = LolaConfig(window=16, sparse=sparse, sinks=sinks, scorer=scorer, gqa="grouped")
    p = make_params(cfg)
    st = random_state(p, 2, 2, ns, 32, 2200, torch.float32, 5)
    if sinks:
        st.sp_pos[..., :sinks] = torch.arange(sinks)
    ref = clone_state(st)
    kmerge.evict_before_triton(st, p, 2200 - 16)
    evict_before(ref, p, 2200 - 16)
    _states_equal(st, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["ties", "signed"])
def test_stepwise_selection_matches_split_topk(stepwise_only, monkeypatch, case):
    """The select kernel keeps exactly split_topk's pairs, ties and signed zeros included."""
    p = make_params(LolaConfig(window=16, sparse=20, scorer="random", gqa="grouped"))
    st = random_state(p, 2, 2, 20, 32, 2200, torch.float32, 5)
    n_ev = 16
    cand_pos = torch.cat([st.sp_pos, st.win_pos[:n_ev].view(1, 1, n_ev).expand(2, 2, n_ev)], dim=2)
    g = torch.Generator().manual_seed(3)
    sc = torch.randint(0, 4, (2, 2, 20 + n_ev), generator=g).float()
    if case == "signed":
        sc = (sc - 1.5) * 10.0 ** torch.randint(-30, 30, sc.shape, generator=g).float()
        sc[..., ::5], sc[..., 2::5] = -0.0, 0.0
    monkeypatch.setattr(kmerge, "precomputed_scores", lambda *a, **k: sc)
    kmerge.evict_before_triton(st, p, 2200 - 16)
    kept, _ = split_topk(sc, 20)
    assert torch.equal(st.sp_pos, cand_pos.gather(2, kept))


def test_merge_mode_env_and_implementation_name(monkeypatch):
    """$LOLA_MERGE picks the merge, rejects other values, is recorded by kernel_env, and the implementation name of a
    Triton layer call says which merge ran (and a forced rank-count selection)."""
    from lola_bench.models.patch import _paths

    p = make_params(LolaConfig(window=8, sparse=8))
    q = torch.zeros(1, 4, 1, 16)
    monkeypatch.delenv("LOLA_MERGE", raising=False)
    monkeypatch.delenv("LOLA_MERGE_SELECT", raising=False)
    assert khost.merge_mode() == "persistent" and _paths(q, p, "triton")[2] == "triton"
    monkeypatch.setenv("LOLA_MERGE", "stepwise")
    assert _paths(q, p, "triton")[2] == "triton (stepwise merge)" and K.kernel_env()["LOLA_MERGE"] == "stepwise"
    monkeypatch.setenv("LOLA_MERGE", "stepwise-eager")
    assert _paths(q, p, "triton")[2] == "triton (stepwise merge, eager)"
    monkeypatch.setenv("LOLA_MERGE_SELECT", "rank")            # a forced selection mode is named too
    assert _paths(q, p, "triton")[2] == "triton (stepwise merge, eager, rank-count selection)"
    monkeypatch.setenv("LOLA_MERGE", "persistent")
    assert _paths(q, p, "triton")[2] == "triton (rank-count selection)"
    monkeypatch.setenv("LOLA_MERGE_SELECT", "threshold")
    assert _paths(q, p, "triton")[2] == "triton"
    monkeypatch.setenv("LOLA_MERGE", "bogus")
    with pytest.raises(ValueError, match="LOLA_MERGE"):
        khost.merge_mode()
