"""Whole-model static LoLA decode (lola_bench/models/static_cache.py, lola_bench/evals/graphed_decode.py's
``lola_static_decode``), run eagerly on CPU: the conversion of a prefilled LolaCache is exact, and greedy decoding
through the static cache (the path gpu_bench captures as a CUDA graph on a GPU) generates what ``generate()`` with
the LoLA cache generates, across several chunk boundaries."""

import pytest
import torch

from lola_bench.attention.config import LolaConfig
from lola_bench.attention.state import state_dtype
from lola_bench.evals.graphed_decode import lola_static_decode, param_bytes
from lola_bench.models.loading import random_model
from lola_bench.models.patch import lola_modules, new_cache, patch_model, unpatch_model
from lola_bench.models.static_cache import to_static_cache

FIELDS = ("win_k", "win_v", "win_pos", "sp_k", "sp_v", "sp_pos", "H", "s")
PROMPT, N_WARM, N_TOKENS = 37, 3, 30


@pytest.fixture(scope="module")
def tiny():
    # larger init than HF's default so greedy tokens vary (as tests/models/test_patch.py)
    return random_model("tiny", torch.float32, seed=1, initializer_range=0.5)


def prompt():
    return torch.randint(100, 4000, (1, PROMPT), generator=torch.Generator().manual_seed(0))


def test_conversion_is_exact_and_model_steps_match_the_lola_cache(tiny):
    cfg = LolaConfig(window=8, sparse=6, sinks=2, combine="calibrated", gqa="grouped", feature_map="hedgehog")
    patch_model(tiny, cfg)
    try:
        ids = prompt()
        cache, ref = new_cache(tiny), new_cache(tiny)
        tiny(ids, cache=cache, use_cache=True)
        tiny(ids, cache=ref, use_cache=True)
        scache = to_static_cache(tiny, cache)
        for a, b in zip(scache.to_cache().layers, cache.layers):
            assert a.state.pos == b.state.pos and a.state.n_folded == b.state.n_folded
            assert all(torch.equal(getattr(a.state, f), getattr(b.state, f)) for f in FIELDS)
        assert scache.get_seq_length() == PROMPT
        tok, merges = ids[:, -1:], 0
        for t in range(PROMPT, PROMPT + 20):                   # the driver's protocol, eagerly
            merges += scache.prepare()
            got = tiny(tok, cache=scache, position_ids=torch.tensor([[t]]), use_cache=True).logits
            scache.advance_host()
            want = tiny(tok, cache=ref, use_cache=True).logits
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            tok = want[:, -1:].argmax(-1)
        assert merges >= 2
        for a, b in zip(scache.to_cache().layers, ref.layers):
            assert (a.state.pos, a.state.n_folded) == (b.state.pos, b.state.n_folded)
            for f in FIELDS:
                torch.testing.assert_close(getattr(a.state, f), getattr(b.state, f), atol=1e-5, rtol=1e-5)
        assert all(m.calls["decode", "torch (static)"] == 20 for m in lola_modules(tiny))
    finally:
        unpatch_model(tiny)


@pytest.mark.parametrize("kw", [
    dict(window=8, sparse=6, sinks=2, combine="calibrated", gqa="grouped", feature_map="hedgehog"),
    dict(window=8, chunk=5, sparse=0, combine="lola", gqa="expanded"),
    dict(window=6, sparse=4, sinks=1, fold=False, scorer="key_norm", gqa="grouped"),
])
def test_static_decode_generates_what_generate_does(tiny, kw):
    """gpu_bench's LoLA graphed-decode row, eagerly: the tokens equal greedy generate() with the LolaCache; the row
    says it ran eagerly and why, counts the boundary merges it timed, and reads parameters + every static slot."""
    cfg = LolaConfig(**kw)
    patch_model(tiny, cfg)
    try:
        ids = prompt()
        row, toks = lola_static_decode(tiny, ids, N_TOKENS, "cpu", n_warm=N_WARM, record=True)
        want = tiny.generate(ids, max_new_tokens=1 + N_WARM + N_TOKENS, do_sample=False)[0, PROMPT:].tolist()
        params = param_bytes(tiny)                      # the LoLA feature maps and window factors included
    finally:
        unpatch_model(tiny)
    assert len(set(want)) > 5, "test model too degenerate to compare"
    assert toks == want
    assert row["impl"] == "static cache, eager" and row["eager_reason"] == "not a CUDA device"
    assert row["capture_error"] is None and row["merge"] == "torch" and row["mode"] == "lola"
    timed = range(PROMPT + N_WARM, PROMPT + N_WARM + N_TOKENS)      # positions of the tokens fed while timed
    assert row["boundary_merges"] == len([t for t in timed if t % cfg.chunk_size == 0]) >= 4
    c = tiny.config
    hs = c.num_key_value_heads if cfg.gqa == "grouped" else c.num_attention_heads
    slots = cfg.sparse + cfg.sinks + cfg.window + cfg.chunk_size
    f = 2 * c.head_dim if cfg.fold else 0
    per_layer = 2 * hs * slots * c.head_dim * 4 + c.num_attention_heads * f * (c.head_dim + 1) * \
        torch.empty(0, dtype=state_dtype(torch.float32)).element_size() + hs * (cfg.sparse + cfg.sinks) * 8
    assert row["cache_bytes"] == c.num_hidden_layers * per_layer
    assert row["bytes_per_token"] == params + row["cache_bytes"]


@pytest.mark.parametrize("merge", ["in place", "graph"])
def test_steady_merges_in_place_generate_the_same_tokens(tiny, merge):
    """The steady chunk-boundary merges run in place (``attention.static_merge``) instead of through a LolaState
    copy: the same tokens as generate(); the row counts which merges ran. "graph" on CPU: nothing to capture, the
    row says so and the merges run in place; its warm-up runs through the first boundary (the capture's)."""
    cfg = LolaConfig(window=8, sparse=6, sinks=2, combine="calibrated", gqa="grouped", feature_map="hedgehog")
    patch_model(tiny, cfg)
    try:
        ids = prompt()
        row, toks = lola_static_decode(tiny, ids, N_TOKENS, "cpu", n_warm=N_WARM, record=True, merge=merge)
        warm = max(N_WARM, (cfg.chunk_size - PROMPT % cfg.chunk_size) % cfg.chunk_size + 2) if merge == "graph" \
            else N_WARM
        want = tiny.generate(ids, max_new_tokens=1 + warm + N_TOKENS, do_sample=False)[0, PROMPT:].tolist()
    finally:
        unpatch_model(tiny)
    assert toks == want
    counts = dict(part.split(" ") for part in row["merges"].split(", "))
    assert int(counts["static"]) >= 4 and "graph" not in counts, row["merges"]     # the prompt already filled λ
    assert row["merge_mode"] == "in place"                       # on CPU "graph" falls back to it
    assert (row["merge_capture_error"] == "not a CUDA device") == (merge == "graph")


class _Recorded:
    """A stand-in for the merge's CUDA graph on CPU: capture records the work without running it, replay runs it."""

    def __init__(self, work):
        self.work = work

    def replay(self):
        self.work()


@pytest.mark.parametrize("n_prompt", [PROMPT, 10])
def test_replayed_merge_graph_generates_the_same_tokens(tiny, monkeypatch, n_prompt):
    """The "graph" branch of ``StaticLolaCache.prepare`` after a capture (replay, then the host mirrors, the counts
    and the capacity check), with a recorded stand-in for the CUDA graph: the same tokens as generate(), the first
    steady merge in place and captured during the warm-up, every timed one replayed. A prompt of 10 tokens leaves
    the sparse cache short of full: its first boundary goes through the copy, the first steady one comes later."""
    from lola_bench.attention.static_merge import static_merge
    from lola_bench.models.static_cache import StaticLolaCache

    captured_at = []

    def capture(self):
        states = self.states
        captured_at.append(states[0].pos_host)
        self.merge_graph = _Recorded(lambda: [static_merge(s) for s in states])

    monkeypatch.setattr(StaticLolaCache, "_capture_merge", capture)
    cfg = LolaConfig(window=8, sparse=6, sinks=2, combine="calibrated", gqa="grouped", feature_map="hedgehog")
    patch_model(tiny, cfg)
    try:
        ids = prompt()[:, :n_prompt]
        row, toks = lola_static_decode(tiny, ids, N_TOKENS, "cpu", n_warm=N_WARM, record=True, merge="graph")
        want = tiny.generate(ids, max_new_tokens=len(toks), do_sample=False)[0, n_prompt:].tolist()
    finally:
        unpatch_model(tiny)
    assert toks == want
    counts = {k: int(v) for k, v in (part.split(" ") for part in row["merges"].split(", "))}
    # every timed boundary replayed the graph: the in-place merge and its capture ran in the warm-up
    assert counts["static"] == 1 and counts["graph"] == row["boundary_merges"] >= 3, counts
    assert counts.get("copy", 0) == (n_prompt == 10), counts
    assert len(captured_at) == 1 and captured_at[0] < n_prompt + len(toks) - 1 - N_TOKENS, captured_at
    assert row["merge_mode"] == "graph" and row["merge_capture_error"] is None


def test_configuration_without_static_state_decodes_eagerly_and_says_why(tiny):
    patch_model(tiny, LolaConfig(window=6, sparse=4, fold=False, scorer="attention"))
    try:
        ids = prompt()
        row, toks = lola_static_decode(tiny, ids, 8, "cpu", n_warm=2, record=True)
        want = tiny.generate(ids, max_new_tokens=11, do_sample=False)[0, PROMPT:].tolist()
    finally:
        unpatch_model(tiny)
    assert toks == want
    assert row["impl"] == "LolaCache, eager" and "attention mass" in row["eager_reason"]


def test_the_whole_model_step_reads_no_tensor_value_on_the_host():
    """What capture needs of the whole forward (HF's embedding, rotary, masks, MLPs and LoLA's static step): on the
    meta device, where reading any tensor value on the host raises, one decode step through a StaticLolaCache runs."""
    from lola_bench.attention.static_decode import StaticLolaState
    from lola_bench.models.static_cache import StaticLolaCache

    model = random_model("tiny", torch.float32)
    patch_model(model, LolaConfig(window=8, sparse=6, sinks=1, combine="calibrated", gqa="grouped",
                                  feature_map="hedgehog"))
    model.to("meta")
    cache = StaticLolaCache([StaticLolaState(m.params(), 1, torch.float32, "meta") for m in lola_modules(model)])
    tok = torch.zeros(1, 1, dtype=torch.long, device="meta")
    pos = torch.zeros(1, dtype=torch.long, device="meta")
    logits = model(tok, cache=cache, position_ids=pos.view(1, 1), use_cache=True, logits_to_keep=1).logits
    assert logits.shape == (1, 1, model.config.vocab_size) and logits.device.type == "meta"
    assert all(m.calls["decode", "torch (static)"] == 1 for m in lola_modules(model))


def test_replayed_step_reads_no_host_counter(tiny):
    """What a CUDA-graph replay does, on CPU: the step called again and again inside a chunk with the cache's host
    counters never advanced (a replay runs no Python) must still decode each position as the LolaCache does; a step
    that took its position from the cache's host counter would repeat the captured one."""
    from lola_bench.evals.graphed_decode import decode_step

    patch_model(tiny, LolaConfig(window=8, sparse=6, sinks=2, combine="calibrated", feature_map="hedgehog"))
    try:
        ids = prompt()[:, :33]                       # 33 tokens: the next chunk boundary (chunk 8) is at 40
        cache, ref = new_cache(tiny), new_cache(tiny)
        with torch.no_grad():
            tiny(ids, cache=cache, use_cache=True)
            tiny(ids, cache=ref, use_cache=True)
            scache = to_static_cache(tiny, cache)
            assert not scache.prepare()
            tok, pos = ids[:, -1:].clone(), torch.tensor([33])
            step = decode_step(tiny, scache, tok, pos, "cache")
            for _ in range(6):                       # positions 33..38, host counters frozen at 33
                want = tiny(tok.clone(), cache=ref, use_cache=True).logits[:, -1]
                torch.testing.assert_close(step(), want, atol=1e-4, rtol=1e-4)
    finally:
        unpatch_model(tiny)


def test_static_cache_counts_tiers_as_the_lola_cache(tiny):
    patch_model(tiny, LolaConfig(window=8, sparse=6, sinks=2, combine="calibrated", feature_map="hedgehog"))
    try:
        cache = new_cache(tiny)
        with torch.no_grad():
            tiny(prompt(), cache=cache, use_cache=True)
        want = cache.nbytes_by_tier()
        scache = to_static_cache(tiny, cache)
        assert scache.nbytes_by_tier() == want and want["sparse"] > 0 and want["state"] > 0
    finally:
        unpatch_model(tiny)
