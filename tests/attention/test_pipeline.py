"""The two-thread CPU pipeline of the batched prefill (selection pass on a worker thread, attention of the chunks on
both): the same selection, state and outputs as the plain batched path and the chunk loop, the caller's thread count
restored, errors from either thread raised in the caller, and when it runs."""

import threading

import pytest
import torch

from lola_bench.attention import batched, pipeline, selection, testing
from lola_bench.attention.batched import lola_batched
from lola_bench.attention.chunked import lola_chunked_loop
from lola_bench.attention.config import LolaConfig
from lola_bench.attention.state import LolaState
from tests.attention.test_batched import CONFIGS, D, assert_same_state, continuation_then_decode


@pytest.fixture
def two_threads(monkeypatch):
    """Two intra-op threads (the pipeline's condition) and the pipeline forced on; the count restored after."""
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setenv("LOLA_CPU_PIPELINE", "1")
    yield
    torch.set_num_threads(prev)


@pytest.fixture
def spy(monkeypatch):
    """Records (what, thread name, intra-op threads) for the selection pass and each attention block."""
    calls = []

    def wrap(name):
        real = getattr(pipeline, name)

        def f(*a, **kw):
            calls.append((name, threading.current_thread().name, torch.get_num_threads()))
            return real(*a, **kw)
        monkeypatch.setattr(pipeline, name, f)

    wrap("select_all")
    wrap("attend_block")
    return calls


@pytest.mark.parametrize("kw", CONFIGS)
@pytest.mark.parametrize("gqa", ["grouped", "expanded"])
def test_pipeline_equals_plain_path_and_loop(two_threads, spy, monkeypatch, kw, gqa):
    cfg = LolaConfig(gqa=gqa, **{"feature_map": "hedgehog", "combine": "calibrated", **kw})
    p = testing.make_params(cfg, 6, 2, D, dtype=torch.float64)
    q, k, v = testing.qkv(101, 6, 2, 2, D, dtype=torch.float64)
    st_p, st_b, st_l = LolaState(), LolaState(), LolaState()
    piped = pipeline.use_pipeline(q, st_p, p)     # lambda >= T: all exact prefix, nothing to pipeline
    assert piped == (kw.get("sparse") != 500)
    out_p = lola_batched(q, k, v, st_p, p)
    if piped:
        assert [c[0] for c in spy][:1] == ["select_all"] and "attend_block" in [c[0] for c in spy]
        assert all(n == 1 for _, _, n in spy)                             # one intra-op thread each
        assert spy[0][1] != threading.current_thread().name               # the pass ran on the worker
    assert torch.get_num_threads() == 2                                    # the caller's count is back
    monkeypatch.setenv("LOLA_CPU_PIPELINE", "0")
    n_calls = len(spy)
    testing.assert_close(out_p, lola_batched(q, k, v, st_b, p), 1e-12)
    assert len(spy) == n_calls                                             # the plain path does not pipeline
    assert_same_state(st_p, st_b, 1e-12)
    testing.assert_close(out_p, lola_chunked_loop(q, k, v, st_l, p), 1e-12)
    assert_same_state(st_p, st_l, 1e-12)


@pytest.mark.parametrize("kw", [CONFIGS[0], CONFIGS[3], CONFIGS[4], CONFIGS[6], CONFIGS[11]])
@pytest.mark.parametrize("block", [1, 1 << 20])
def test_pipeline_continuation_fp32_then_decode_equals_loop(two_threads, monkeypatch, kw, block):
    """Unaligned calls continuing a state (no exact prefix), blocks of one chunk or many, float32, then decode."""
    monkeypatch.setattr(pipeline, "BLOCK_ELEMS", block)
    cfg = LolaConfig(gqa="grouped", **{"feature_map": "hedgehog", "combine": "calibrated", **kw})
    p = testing.make_params(cfg, 6, 3, D)
    q, k, v = testing.qkv(140, 6, 3, 2, D)
    continuation_then_decode(p, q, k, v, [0, 3, 22, 23, 61, 130], 2e-6)


def test_pipeline_errors_reach_the_caller(two_threads, monkeypatch):
    """An error in the worker's selection pass or in the caller's part is raised by the call, the thread count is
    restored, nothing hangs, and the next call works."""
    cfg = LolaConfig(window=8, sparse=5, feature_map="hedgehog", gqa="grouped")
    p = testing.make_params(cfg, 6, 2, D)
    q, k, v = testing.qkv(101, 6, 2, 1, D)
    real_fold = selection.Slots.fold

    def broken_fold(self, lin, out_slot):
        raise RuntimeError("fold failed")

    monkeypatch.setattr(selection.Slots, "fold", broken_fold)
    with pytest.raises(RuntimeError, match="fold failed"):
        lola_batched(q, k, v, LolaState(), p)
    assert torch.get_num_threads() == 2
    monkeypatch.setattr(selection.Slots, "fold", real_fold)

    def broken_prefix(*a):
        raise ValueError("prefix failed")

    monkeypatch.setattr(pipeline, "softmax_prefix", broken_prefix)
    with pytest.raises(ValueError, match="prefix failed"):
        lola_batched(q, k, v, LolaState(), p)
    assert torch.get_num_threads() == 2
    monkeypatch.undo()
    torch.set_num_threads(2)
    monkeypatch.setenv("LOLA_CPU_PIPELINE", "1")
    testing.assert_close(lola_batched(q, k, v, LolaState(), p), lola_chunked_loop(q, k, v, LolaState(), p), 2e-6)


def test_when_the_pipeline_runs(monkeypatch):
    """CPU, two or more threads, outside autograd, LOLA_CPU_PIPELINE not 0; by default from MIN_CHUNKS chunks of
    queries after the exact prefix, forced (=1) from two."""
    cfg = LolaConfig(window=8, sparse=5)
    p = testing.make_params(cfg, 4, 2, D)
    C = cfg.chunk_size
    prefix = cfg.exact_len
    st = LolaState()
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert not pipeline.use_pipeline(torch.zeros(1, 4, 4096, D), st, p)
        torch.set_num_threads(2)
        monkeypatch.delenv("LOLA_CPU_PIPELINE", raising=False)
        long_q = torch.zeros(1, 4, prefix + pipeline.MIN_CHUNKS * C, D)
        short_q = torch.zeros(1, 4, prefix + (pipeline.MIN_CHUNKS - 1) * C, D)
        assert pipeline.use_pipeline(long_q, st, p) and not pipeline.use_pipeline(short_q, st, p)
        monkeypatch.setenv("LOLA_CPU_PIPELINE", "1")
        assert pipeline.use_pipeline(short_q, st, p)
        assert not pipeline.use_pipeline(torch.zeros(1, 4, prefix + C, D), st, p)
        monkeypatch.setenv("LOLA_CPU_PIPELINE", "0")
        assert not pipeline.use_pipeline(long_q, st, p)
        monkeypatch.setenv("LOLA_CPU_PIPELINE", "1")
        long_q.requires_grad_()
        assert pipeline.use_pipeline(long_q, st, p)           # no autograd here (tests run under no_grad)
        with torch.enable_grad():
            assert not pipeline.use_pipeline(long_q, st, p)
    finally:
        torch.set_num_threads(prev)


def test_plain_batched_path_at_one_thread(monkeypatch):
    """With one intra-op thread lola_batched never hands work to the pipeline, whatever LOLA_CPU_PIPELINE says."""
    monkeypatch.setenv("LOLA_CPU_PIPELINE", "1")
    monkeypatch.setattr(pipeline, "lola_pipelined", lambda *a: pytest.fail("pipelined at one thread"))
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        cfg = LolaConfig(window=8, sparse=5, feature_map="hedgehog")
        p = testing.make_params(cfg, 4, 2, D)
        q, k, v = testing.qkv(101, 4, 2, 1, D)
        batched.lola_batched(q, k, v, LolaState(), p)
    finally:
        torch.set_num_threads(prev)


def test_the_model_names_the_pipeline_when_it_ran(two_threads, monkeypatch):
    """A layer's implementation name says `torch (CPU two-thread pipeline)` for a prefill the pipeline computed, and
    plain `torch` when it is switched off, so result rows never mix the two silently."""
    from lola_bench.models.loading import load_model
    from lola_bench.models.patch import implementation_used, patch_model, reset_calls, unpatch_model

    loaded = load_model("random:tiny", device="cpu", dtype="float32")
    model = loaded.model
    patch_model(model, LolaConfig(window=8, sparse=16, feature_map="hedgehog"), kernels="torch")
    ids = torch.randint(0, model.config.vocab_size, (1, 90))
    try:
        with torch.no_grad():
            model(ids)
            assert implementation_used(model) == f"torch ({pipeline.PIPELINE_NAME})"
            reset_calls(model)
            monkeypatch.setenv("LOLA_CPU_PIPELINE", "0")
            model(ids)
            assert implementation_used(model) == "torch"
    finally:
        unpatch_model(model)
