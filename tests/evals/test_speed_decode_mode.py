"""`speed --decode-mode`: graphed decode (static cache, the step captured as a CUDA graph on CUDA) is what a GPU run
times by default, eager elsewhere; off CUDA a graphed run takes the same static-cache step eagerly and says so, and
its rows name what computed the decode."""

import pytest

from lola_bench.errors import UserError
from lola_bench.evals import speed


def test_auto_is_graphed_on_cuda_only():
    assert speed.graphed_decode_on("auto", "cuda") and not speed.graphed_decode_on("auto", "cpu")
    assert speed.graphed_decode_on("graphed", "cpu") and not speed.graphed_decode_on("eager", "cuda")
    with pytest.raises(UserError, match="--decode-mode"):
        speed.graphed_decode_on("fast", "cpu")


@pytest.fixture(scope="module")
def tiny():
    import lola_bench

    return lola_bench.load("random:tiny", window=8, lam=8, lola_ckpt="none", chunk=8)


def _run(lm, mode):
    return speed.run_speed(lm.loaded, lm.variants(["full", "lola"]), [40], repeats=1, decode_tokens=3,
                           decode_mode=mode).set_index("attn")


def test_graphed_rows_say_static_cache_and_why_eager(tiny):
    df = _run(tiny, "graphed")
    full, lola = df.loc["full"], df.loc["lola"]
    assert full["decode_impl"] == "static cache, eager (not a CUDA device)"
    # and how its chunk-boundary merges ran: off CUDA, all through a LolaState copy (the copy's merge)
    assert lola["decode_impl"].startswith("static cache, eager (not a CUDA device); merges: copy ")
    assert "static" not in lola["decode_impl"].split("merges:")[1]
    # LoLA is timed in whole chunks: the merge of the one boundary inside them is counted and amortized
    assert lola["decode_boundary_tokens"] == 1
    assert lola["decode_ms_per_token"] > 0
    # the prefill ran the normal path, the decode the static step: the row names both
    assert lola["implementation"] == "decode: torch (static); prefill: torch"
    assert df["decode_gbs"].gt(0).all() and df["decode_of_peak"].isna().all()   # no peak bandwidth off CUDA


def test_eager_rows_say_eager(tiny):
    df = _run(tiny, "eager")
    assert (df["decode_impl"] == speed.EAGER_DECODE).all()
    assert "decode_gbs" not in df.columns and df.loc["lola", "implementation"] == "torch"


def test_a_variant_without_static_state_decodes_eagerly_and_counts_its_merges():
    import lola_bench

    lm = lola_bench.load("random:tiny", window=8, lam=8, lola_ckpt="none", chunk=8, scorer="attention")
    df = speed.run_speed(lm.loaded, lm.variants(["evict"]), [40], repeats=1, decode_tokens=3,
                         decode_mode="graphed").set_index("attn")
    row = df.loc["evict"]
    assert row["decode_impl"].startswith("LolaCache, eager (no static state: scorer 'attention'")
    # 9 warm-up tokens after the 40-token prompt, then one chunk timed (positions 49..56): 56 starts a chunk
    assert row["decode_boundary_tokens"] == 1
