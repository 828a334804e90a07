"""Generation with the static-cache decode (lola_bench/evals/graphed_generate.py: ruler's and sweep's path on CUDA,
``--decode-mode graphed``), run on CPU where the same step runs eagerly: the same tokens, cache tiers and stop as the
eager ``greedy_generate``, for full attention, LoLA and eviction, and the row says what ran and why."""

import pytest
import torch

from lola_bench.attention.config import LolaConfig
from lola_bench.evals.graphed_generate import graphed_generate
from lola_bench.evals.timing import EAGER_DECODE, greedy_generate
from lola_bench.models.loading import random_model
from lola_bench.models.patch import lola_modules, patch_model, unpatch_model

PROMPT, NEW = 37, 26


@pytest.fixture(scope="module")
def tiny():
    # larger init than HF's default so greedy tokens vary (as tests/models/test_patch.py)
    return random_model("tiny", torch.float32, seed=1, initializer_range=0.5)


def prompt():
    return torch.randint(100, 4000, (1, PROMPT), generator=torch.Generator().manual_seed(0))


def both(model, eos=frozenset(), new=NEW, **kw):
    ids = prompt()
    return greedy_generate(model, ids, new, set(eos), "cpu"), graphed_generate(model, ids, new, set(eos), "cpu", **kw)


def check_same(ref, got):
    assert len(set(ref.tokens)) > 4, "test model too degenerate to compare"
    assert got.tokens == ref.tokens
    assert got.cache_bytes == ref.cache_bytes
    assert got.n_prompt == ref.n_prompt == PROMPT
    assert ref.decode_impl == EAGER_DECODE


def test_full_attention_static_cache(tiny):
    ref, got = both(tiny)
    check_same(ref, got)
    assert got.decode_impl == "static cache, eager (not a CUDA device)"
    assert got.decode_s_per_token is not None and got.decode_s_per_token > 0 and got.decode_setup_s > 0


@pytest.mark.parametrize("kw", [
    dict(window=8, sparse=6, sinks=2, combine="calibrated", gqa="grouped", feature_map="hedgehog"),
    dict(window=8, chunk=5, sparse=0, combine="lola", gqa="expanded"),
    dict(window=6, sparse=4, sinks=1, fold=False, scorer="key_norm", gqa="grouped"),
])
def test_lola_and_eviction_static_cache(tiny, kw):
    """Across several chunk boundaries (merges between the steps); the static step is what ran."""
    patch_model(tiny, LolaConfig(**kw))
    try:
        ref, got = both(tiny)
        static_calls = sum(n for m in lola_modules(tiny) for (what, impl), n in m.calls.items()
                           if what == "decode" and "static" in impl)
        layers = len(lola_modules(tiny))
    finally:
        unpatch_model(tiny)
    check_same(ref, got)
    assert got.decode_impl == "static cache, eager (not a CUDA device)"
    assert static_calls == layers * (NEW - 1)


def test_no_static_state_decodes_eagerly_and_says_why(tiny):
    patch_model(tiny, LolaConfig(window=6, sparse=4, fold=False, scorer="attention", evict_at="prompt_end"))
    try:
        ref, got = both(tiny)
    finally:
        unpatch_model(tiny)
    check_same(ref, got)
    assert got.decode_impl.startswith("LolaCache, eager (no static state: ")


def test_caller_reason_forces_the_own_cache(tiny):
    patch_model(tiny, LolaConfig(window=8, sparse=6, combine="lola", gqa="grouped"))
    try:
        ref, got = both(tiny, no_static="the needle oracle pins the eager merge")
    finally:
        unpatch_model(tiny)
    check_same(ref, got)
    assert got.decode_impl == "LolaCache, eager (no static state: the needle oracle pins the eager merge)"


@pytest.mark.parametrize("at", [0, 1, 5])
def test_stops_at_eos_where_greedy_does(tiny, at):
    """An end-of-sequence id first generated in the first token, in the warm-up or in the replayed steps."""
    ref = greedy_generate(tiny, prompt(), NEW, set(), "cpu")
    eos = {ref.tokens[at]}
    first = ref.tokens.index(ref.tokens[at])
    ref2, got = both(tiny, eos)
    assert got.tokens == ref2.tokens == ref.tokens[:first + 1]
    if first == 0:
        assert got.decode_impl is None and got.decode_s_per_token is None
    elif first <= 2:                              # the first token and the two warm-up steps
        assert got.decode_s_per_token is None and "generation ended during warm-up" in got.decode_impl
    else:
        assert got.decode_s_per_token is not None


def test_one_token(tiny):
    ref, got = both(tiny, new=1)
    assert got.tokens == ref.tokens and len(got.tokens) == 1
    assert got.decode_impl is None and ref.decode_impl is None


def test_ruler_graphed_decode_same_answers_and_says_what_ran(tmp_path):
    """``ruler --decode-mode graphed`` (what auto means on CUDA): the same predictions as the eager run, each row's
    ``decode_impl`` names the path (here its eager form off CUDA), ``--pin-needle`` cells keep the LolaCache and say
    why, and the graphed cells resume under their own key."""
    from lola_bench.evals.ruler_bench import RulerSettings, run_ruler
    from lola_bench.models.loading import load_model
    from lola_bench.records import ResumeStore
    from lola_bench.settings import AttentionSettings

    loaded = load_model("random:tiny", device="cpu", dtype="float32")
    variants = [AttentionSettings.build("full", None, "torch"),
                AttentionSettings.build("lola", LolaConfig(window=16, sparse=24), "torch")]
    rs = dict(tasks=("passkey",), ctxs=(320,), samples=2, warmup=False, diagnostics=False)
    store = ResumeStore(tmp_path / "run")
    eager = run_ruler(loaded, variants, RulerSettings(**rs, decode_mode="eager"), store=store)
    graphed = run_ruler(loaded, variants, RulerSettings(**rs, decode_mode="graphed"), store=store)
    assert eager.reused == [] and graphed.reused == []           # an eager cell never stands in for a graphed one
    again = run_ruler(loaded, variants, RulerSettings(**rs, decode_mode="graphed"), store=store)
    assert len(again.reused) == 2 and again.summary["decode_impl"].tolist() == graphed.summary["decode_impl"].tolist()
    assert [p["prediction"] for p in graphed.predictions] == [p["prediction"] for p in eager.predictions]
    assert eager.summary["decode_impl"].tolist() == [EAGER_DECODE] * 2
    assert eager.summary["prefill_logits"].tolist() == ["last position"] * 2        # the default
    assert graphed.summary["decode_impl"].tolist() == ["static cache, eager (not a CUDA device)"] * 2
    assert all(p["decode_setup_s"] > 0 for p in graphed.predictions)
    # the implementation column still names the prefill's path next to the static decode step
    assert eager.summary["implementation"].tolist()[1] == "torch"
    assert graphed.summary["implementation"].tolist()[1] == "decode: torch (static); prefill: torch"
    pinned = run_ruler(loaded, variants[1:], RulerSettings(**rs, decode_mode="graphed", pin_needle=True))
    assert pinned.summary["decode_impl"].tolist() == [
        "LolaCache, eager (no static state: --pin-needle pins the eager merge)"]
    with pytest.raises(Exception, match="unknown --decode-mode"):
        run_ruler(loaded, variants, RulerSettings(**rs, decode_mode="fast"))


def test_static_copy_holds_one_layer_twice_at_most(tiny, monkeypatch):
    """The DynamicCache -> StaticCache copy drops each prefilled layer once copied: while layer i is copied, the
    layers before it are gone (else the peak memory would count a second K/V cache the eager loop never holds)."""
    from transformers import DynamicCache, StaticCache

    from lola_bench.evals.graphed_generate import static_full_cache
    from lola_bench.evals.timing import dynamic_cache_bytes

    cache = DynamicCache(config=tiny.config)
    with torch.no_grad():
        tiny(prompt(), cache=cache, use_cache=True)
    n, total = len(cache.layers), dynamic_cache_bytes(cache)
    held, update = [], StaticCache.update
    monkeypatch.setattr(StaticCache, "update", lambda self, k, v, i, *a, **kw: (
        held.append(dynamic_cache_bytes(cache)), update(self, k, v, i, *a, **kw))[1])
    out = static_full_cache(tiny, cache, PROMPT + 4)
    assert n > 1 and held == [total * (n - i) // n for i in range(n)]
    assert dynamic_cache_bytes(cache) == 0 and int(out.get_seq_length()) == PROMPT


def test_sliding_window_full_attention_decodes_eagerly_and_says_why():
    """A sliding-window model (Mistral v0.1, Qwen2 with use_sliding_window): transformers' static sliding layer keeps
    its length in a host int, which a replayed graph never advances, so full attention keeps its DynamicCache."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    cfg = MistralConfig(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, sliding_window=16, initializer_range=0.5)
    model = MistralForCausalLM(cfg).eval()
    ref, got = both(model)
    assert got.tokens == ref.tokens
    assert got.decode_impl.startswith("DynamicCache, eager (no static state: sliding-window layers")


class _HostReads:
    """Counts the tensor values read on the host (``.item()``, ``int(t)``, ``bool(t)``: a sync, which breaks a CUDA
    graph capture) while active."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func is torch.ops.aten._local_scalar_dense.default:
                    outer.n += 1
                return func(*args, **(kwargs or {}))

        self.n, self._mode = 0, Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)


def _host_values(cache) -> list:
    """Every plain host value of the cache's layers (and of a LoLA layer's state): what a replay would not update."""
    out = []
    for i, layer in enumerate(cache.layers):
        for obj in (layer, getattr(layer, "state", None)):
            out += [(i, k, v) for k, v in getattr(obj, "__dict__", {}).items() if isinstance(v, (bool, int, float))]
    return out


@pytest.mark.parametrize("cfg", [None, LolaConfig(window=8, sparse=6, sinks=2),
                                 LolaConfig(window=6, sparse=4, fold=False, scorer="key_norm")])
def test_the_captured_step_is_device_work_only(tiny, cfg):
    """What a CUDA graph needs of the step it captures, checked on CPU: the step reads no tensor value on the host
    and changes no host-side value of the static cache (a replay runs no Python, so it would leave them stale).
    The merge (``prepare``) and ``advance_host`` run outside the step."""
    from transformers import DynamicCache

    from lola_bench.evals.graphed_decode import decode_step, static_lola, step_kernels
    from lola_bench.evals.graphed_generate import static_full_cache
    from lola_bench.models.patch import new_cache

    if cfg is not None:
        patch_model(tiny, cfg)
    try:
        with torch.no_grad():
            cache = new_cache(tiny) if cfg else DynamicCache(config=tiny.config)
            tok = tiny(prompt(), cache=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
            if cfg:
                cache, evict, _, use_kernels = static_lola(tiny, cache, PROMPT + 8)
            else:
                cache, use_kernels = static_full_cache(tiny, cache, PROMPT + 8), False
            step = decode_step(tiny, cache, tok, torch.tensor([PROMPT]), "cache")
            with step_kernels(tiny, use_kernels) if cfg else torch.no_grad():
                for _ in range(3):
                    if cfg:
                        cache.prepare(evict)
                    before = _host_values(cache)
                    with _HostReads() as reads:
                        step()
                    assert reads.n == 0 and _host_values(cache) == before
                    if cfg:
                        cache.advance_host()
    finally:
        if cfg is not None:
            unpatch_model(tiny)


@pytest.mark.parametrize("keep,positions", [("last", 1), ("all", PROMPT)])
def test_prefill_head_positions(tiny, keep, positions):
    """--prefill-logits: the output head on the last prompt position (as generate() does) or on all of them (what
    ruler cells measured before the flag), in both generation paths; the first token is the same either way."""
    seen = []
    hook = tiny.lm_head.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[1]))
    try:
        ids = prompt()
        a = greedy_generate(tiny, ids, 3, set(), "cpu", keep)
        first = seen[0]
        seen.clear()
        b = graphed_generate(tiny, ids, 3, set(), "cpu", logits=keep)
    finally:
        hook.remove()
    assert first == seen[0] == positions
    assert a.tokens == b.tokens
