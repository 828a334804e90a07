"""`speed` runs the variants round robin (one repeat of each in turn, after one warm-up each per context), so a
machine whose speed drifts during the run slows every variant alike; each row keeps its own variant's timings."""

import contextlib
from types import SimpleNamespace

import lola_bench.evals.speed as speed
from lola_bench.attention.config import LolaConfig
from lola_bench.settings import AttentionSettings


def test_variants_take_turns_and_rows_keep_their_own_timings(monkeypatch):
    order, current = [], {}

    @contextlib.contextmanager
    def variant(model, v, ckpt):
        current["v"] = v.mode
        yield lambda: f"impl-{v.mode}" if v.mode != "full" else None

    def timed(model, ctx, decode_tokens, device, seed=0, chunk=None):
        order.append((current["v"], ctx, "warm" if (decode_tokens == 2 and ctx <= 256) else seed))
        t = {"full": 2.0, "lola": 1.0}[current["v"]] + seed / 100     # distinct per variant and repeat
        return {"prefill_s": t, "decode_ms_per_token": 10 * t, "decode_amortized_ms_per_token": 10 * t,
                "decode_boundary_tokens": 0, "peak_mem_mib": 1.0}

    monkeypatch.setattr(speed, "attention_variant", variant)
    monkeypatch.setattr(speed, "time_variant", timed)
    variants = [AttentionSettings("full"), AttentionSettings("lola", LolaConfig(window=16, sparse=16))]
    loaded = SimpleNamespace(model=None, spec="random:tiny", device="cpu")
    df = speed.run_speed(loaded, variants, [512, 1024], repeats=2, decode_tokens=4)
    assert order == [("full", 256, "warm"), ("lola", 256, "warm"), ("full", 512, 0), ("lola", 512, 0),
                     ("full", 512, 1), ("lola", 512, 1),
                     ("full", 256, "warm"), ("lola", 256, "warm"), ("full", 1024, 0), ("lola", 1024, 0),
                     ("full", 1024, 1), ("lola", 1024, 1)]
    got = df.set_index(["attn", "ctx"])
    assert got.loc[("lola", 512), "ttft_s"] == 1.005 and got.loc[("full", 1024), "ttft_s"] == 2.005   # medians
    assert got.loc[("lola", 512), "ttft_vs_full"] == 1.005 / 2.005
    assert got.loc[("lola", 512), "implementation"] == "impl-lola"


def test_ttft_applies_the_head_to_the_last_position_only():
    """As generate() (and gpu_bench) prefill: the output head on the last prompt position, not on every one; rows
    say so."""
    import torch

    from lola_bench.models.loading import random_model

    model = random_model("tiny", torch.float32)
    seen = []
    hook = model.lm_head.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[1]))
    try:
        speed.time_variant(model, 40, 2, "cpu")
    finally:
        hook.remove()
    assert seen == [1, 1, 1]                       # the prefill's head input is one position, then two decode steps
    variants = [AttentionSettings("full")]
    df = speed.run_speed(SimpleNamespace(model=model, spec="random:tiny", device="cpu"), variants, [40], repeats=1,
                         decode_tokens=1, decode_mode="eager")
    assert df["prefill_logits"].tolist() == ["last position"]
