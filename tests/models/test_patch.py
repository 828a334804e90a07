"""LoLA as a drop-in for Hugging Face Llama models: prefill, generate(), cache accounting, errors."""

import pytest
import torch

from lola_bench.attention.config import LolaConfig
from lola_bench.attention.state import analytic_bytes
from lola_bench.errors import UserError
from lola_bench.models.loading import random_model
from lola_bench.models.patch import is_patched, lola_attention, lola_modules, new_cache, patch_model, unpatch_model


@pytest.fixture(scope="module")
def tiny():
    # larger init than HF's default so greedy tokens vary and comparisons are meaningful
    return random_model("tiny", torch.float32, seed=1, initializer_range=0.5)


@pytest.mark.parametrize("L", [63, 65, 200])
@pytest.mark.parametrize("gqa", ["grouped", "expanded"])
def test_patched_prefill_equals_full_when_cache_covers(tiny, L, gqa):
    ids = torch.randint(0, 5000, (1, L))
    want = tiny(ids).logits
    with lola_attention(tiny, LolaConfig(window=16, sparse=L, gqa=gqa)):
        got = tiny(ids).logits
        calls = [sum(m.calls.values()) for m in lola_modules(tiny)]
    assert calls and all(c == 1 for c in calls), calls        # every layer ran LoLA (one prefill call each)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not is_patched(tiny)
    with lola_attention(tiny, LolaConfig(window=8, sparse=4, gqa=gqa)):   # the same path with a short cache
        short = tiny(ids).logits
    assert not torch.allclose(short, want, atol=1e-3), "LoLA with a short cache must differ from full attention"


def test_generate_equals_full_when_cache_covers(tiny):
    ids = torch.randint(0, 5000, (1, 70))
    full = tiny.generate(ids, max_new_tokens=30, do_sample=False)
    assert len(set(full[0, 70:].tolist())) > 3, "test model too degenerate to compare"
    with lola_attention(tiny, LolaConfig(window=16, sparse=200)):
        lola = tiny.generate(ids, max_new_tokens=30, do_sample=False)
        phases = {phase for m in lola_modules(tiny) for (phase, _impl), n in m.calls.items() if n}
    assert phases == {"prefill", "decode"}, phases        # generate() went through LoLA's prefill and decode
    assert torch.equal(full, lola)


def test_prefill_then_decode_equals_one_prefill_through_the_model(tiny):
    ids = torch.randint(0, 5000, (1, 150))
    with lola_attention(tiny, LolaConfig(window=16, sparse=24)):
        whole = tiny(ids).logits
        cache = new_cache(tiny)
        parts = [tiny(ids[:, :77], cache=cache, use_cache=True).logits]
        for t in range(77, 150):
            parts.append(tiny(ids[:, t:t + 1], cache=cache, use_cache=True).logits)
    torch.testing.assert_close(torch.cat(parts, 1), whole, atol=1e-4, rtol=1e-4)


def test_cache_bytes_equal_analytic_count(tiny):
    ids = torch.randint(0, 5000, (1, 181))
    cfg = LolaConfig(window=16, sparse=40)
    with lola_attention(tiny, cfg):
        cache = new_cache(tiny)
        tiny(ids, cache=cache, use_cache=True)
    c = tiny.config
    want = analytic_bytes(cfg, 181, batch=1, query_heads=c.num_attention_heads, kv_heads=c.num_key_value_heads,
                          head_dim=c.head_dim, feature_dim=2 * c.head_dim, dtype=torch.float32,
                          layers=c.num_hidden_layers)
    assert cache.nbytes_by_tier() == want
    assert cache.get_seq_length() == 181


def test_batch_without_padding_works_and_padding_is_refused(tiny):
    ids = torch.randint(0, 5000, (2, 40))
    want = tiny(ids).logits
    with lola_attention(tiny, LolaConfig(window=8, sparse=100)):
        torch.testing.assert_close(tiny(ids).logits, want, atol=1e-4, rtol=1e-4)
        mask = torch.ones(2, 40, dtype=torch.long)
        mask[1, :5] = 0
        with pytest.raises(UserError, match="padded"):
            tiny(ids, attention_mask=mask)


def test_patch_is_reversible_and_idempotent(tiny):
    ids = torch.randint(0, 5000, (1, 50))
    want = tiny(ids).logits
    patch_model(tiny, LolaConfig(window=8, sparse=0))
    patch_model(tiny, LolaConfig(window=8, sparse=4))
    unpatch_model(tiny)
    torch.testing.assert_close(tiny(ids).logits, want)


def test_unsupported_model_type():
    class Cfg:
        model_type = "gpt2"

    class M:
        config = Cfg()

    with pytest.raises(UserError, match="supports"):
        patch_model(M(), LolaConfig())
