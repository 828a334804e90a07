"""The needle oracle (``ruler --pin-needle``): pinned positions stay in the sparse cache on every path (batched
prefill, chunk loop, decode, the reference), the same pairs everywhere; a RULER run with it holds the needle exactly in
every layer and head, names its rows, and restores the model afterwards."""

from __future__ import annotations

import pytest
import torch

from lola_bench.attention.batched import lola_batched
from lola_bench.attention.chunked import lola_chunked_loop
from lola_bench.attention.config import LolaConfig
from lola_bench.attention.decode import lola_decode
from lola_bench.attention.reference import lola_reference
from lola_bench.attention.state import LolaState
from lola_bench.attention.testing import assert_close, make_params, qkv
from lola_bench.diagnostics.oracle import PIN_SUFFIX, PinnedScorer

PINNED = [5, 6, 7, 40]


def _pinned_params(cfg):
    p = make_params(cfg, hq=4, hkv=2, d=16)
    p.scorer = PinnedScorer(p.scorer, PINNED)
    return p


@pytest.mark.parametrize("scorer,gqa", [("sre", "grouped"), ("sre", "expanded"), ("key_norm", "grouped"),
                                        ("attention", "grouped")])
def test_pinned_positions_stay_on_every_path(scorer, gqa):
    torch.manual_seed(0)
    cfg = LolaConfig(window=8, sparse=6, scorer=scorer, gqa=gqa, feature_map="hedgehog")
    L = 77                                                         # odd: the last chunk is partial
    q, k, v = qkv(L)
    p = _pinned_params(cfg)
    ref = lola_reference(q, k, v, p)
    assert all(set(PINNED) <= set(ref.sparse_pos[0, h].tolist()) for h in range(ref.sparse_pos.shape[1]))
    unpinned = lola_reference(q, k, v, make_params(cfg, hq=4, hkv=2, d=16))
    assert not all(set(PINNED) <= set(unpinned.sparse_pos[0, h].tolist()) for h in range(unpinned.sparse_pos.shape[1]))
    paths = [lola_chunked_loop] + ([] if p.scorer.needs_attention_mass else [lola_batched])
    for path in paths:
        st = LolaState()
        out = path(q[:, :, :L - 3], k[:, :, :L - 3], v[:, :, :L - 3], st, p)
        outs = [out] + [lola_decode(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], st, p) for t in
                        range(L - 3, L)]
        assert_close(torch.cat(outs, dim=2), ref.out, 1e-4, f"{path.__name__} + decode")
        assert torch.equal(torch.sort(st.sp_pos, dim=-1).values, ref.sparse_pos), path.__name__
        assert_close(st.H, ref.H, 1e-4, "H")


def test_pin_counts_inside_lambda():
    cfg = LolaConfig(window=8, sparse=2, feature_map="hedgehog")
    q, k, v = qkv(64)
    ref = lola_reference(q, k, v, _pinned_params(cfg))
    assert ref.sparse_pos.shape[-1] == 2       # lambda pairs, the two pinned positions that fit, in every head
    assert all(set(ref.sparse_pos[0, h].tolist()) <= set(PINNED) for h in range(ref.sparse_pos.shape[1]))


@pytest.fixture(scope="module")
def tiny():
    from lola_bench.models.loading import load_model

    return load_model("random:tiny", device="cpu", dtype="float32")


def test_ruler_run_with_the_needle_pinned(tiny):
    from lola_bench.evals.ruler_bench import RulerSettings, run_ruler
    from lola_bench.models.patch import lola_modules
    from lola_bench.settings import AttentionSettings

    lola = AttentionSettings.build("lola", LolaConfig(window=16, sparse=24, sinks=0), "torch")
    rs = dict(tasks=("passkey",), ctxs=(384,), samples=3, warmup=False)
    plain = run_ruler(tiny, [lola], RulerSettings(**rs))
    pinned = run_ruler(tiny, [lola], RulerSettings(**rs, pin_needle=True))
    # lambda = 24 is too small to keep the key's tokens (plus the rest of the selection) in every head by chance
    assert not all(x == 1.0 for p in plain.predictions for x in p["needle_exact_share"])
    assert all(x == 1.0 for p in pinned.predictions for x in p["needle_exact_share"])
    assert all(p["needle_kept"] and p["needle_pinned"] for p in pinned.predictions)
    assert all(p["scorer"] == "sre" + PIN_SUFFIX for p in pinned.predictions)
    assert pinned.summary["scorer"].tolist() == ["sre" + PIN_SUFFIX]
    assert plain.summary["scorer"].tolist() == ["sre"]
    assert not lola_modules(tiny.model)                      # the variant was unpatched: nothing left pinned


def test_pin_needle_needs_a_needle_task(tiny):
    from lola_bench.errors import UserError
    from lola_bench.evals.ruler_bench import RulerSettings, validate

    with pytest.raises(UserError, match="needle task"):
        validate(RulerSettings(tasks=("vt",), ctxs=(1024,), samples=1, pin_needle=True), 0)
