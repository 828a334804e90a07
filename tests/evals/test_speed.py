"""Decode timing in ``speed``: the chunk-boundary merge of a LoLA token amortized over its chunk."""

import math

from lola_bench.evals.speed import amortized_decode


def test_boundary_token_is_amortized_over_its_chunk():
    # after a 128-token prompt with chunk 64 the first decoded token (position 128) starts a chunk
    amortized, n = amortized_decode([9.0, 1.0, 3.0], ctx=128, chunk=64)
    assert n == 1 and math.isclose(amortized, (63 * 2.0 + 9.0) / 64)
    amortized, n = amortized_decode([1.0, 3.0, 9.0], ctx=126, chunk=64)   # the third token (position 128)
    assert n == 1 and math.isclose(amortized, (63 * 2.0 + 9.0) / 64)


def test_no_boundary_or_full_attention_is_the_mean():
    assert amortized_decode([1.0, 3.0], ctx=100, chunk=64) == (2.0, 0)
    assert amortized_decode([9.0, 1.0], ctx=128, chunk=None) == (5.0, 0)
    assert amortized_decode([9.0], ctx=128, chunk=64) == (9.0, 1)
    assert math.isnan(amortized_decode([], ctx=128, chunk=64)[0])
