"""SnapKV and H2O after a full prefill (``--attn evict --scorer snapkv|attention --evict-at prompt_end``) keep what
the published methods' own rules keep.

SnapKV: the oracle below is written from the published method (FasterDecoding/SnapKV, ``SnapKVCluster.update_kv``):
the prompt's last ``window`` queries attend (softmax over every key, causal inside the window), their probabilities
are summed over those queries, average-pooled over 5 neighbours (zero padding counted) along the keys before the
window, and the top ``capacity - window`` of them stay with the window itself. Keys are repeated per query head
(SnapKV compresses after ``repeat_kv``), which is ``--gqa expanded``; no sinks.

Where the prompt ends on a chunk boundary our window is exactly SnapKV's (the last η positions). Elsewhere ours
also holds the partial chunk's pairs exactly (window start = that of the chunk holding the next position), so its
candidates end up to chunk - 1 positions earlier than SnapKV's: the last case checks that difference and nothing
more.

H2O (FMInference/H2O, ``H2OKVCache_LayerWise`` in ``utils_real_drop``): the heavy-hitter score of a key is the
softmax probability every prompt query gave it (causal), summed over the queries, per head; the top ``hh_size`` of
the keys before the last ``recent_size`` stay with those recent ones. H2O's code then keeps evicting one pair per
generated token (a fixed-size cache); ours, like SnapKV's and kvpress's, compresses once and keeps every generated
token (the cache grows by the answer).
"""

import pytest
import torch
import torch.nn.functional as F

from lola_bench.attention import testing
from lola_bench.attention.chunked import lola_chunked
from lola_bench.attention.config import LolaConfig
from lola_bench.attention.state import LolaState

D = 16


def snapkv_keep(q: torch.Tensor, k: torch.Tensor, window: int, capacity: int, kernel: int = 5) -> torch.Tensor:
    """Positions SnapKV keeps, per query head: (B, Hq, capacity), ascending. q: (B, Hq, P, d), k: (B, Hkv, P, d)."""
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    P = q.shape[2]
    attn = q[..., -window:, :] @ k.transpose(2, 3) / q.shape[-1] ** 0.5                  # (B, Hq, window, P)
    future = torch.ones(window, window, dtype=torch.bool).triu(1)
    attn[..., -window:].masked_fill_(future, float("-inf"))
    attn = torch.softmax(attn, dim=-1)
    votes = attn[..., :-window].sum(dim=-2)                                                # (B, Hq, P - window)
    b, h, n = votes.shape
    pooled = F.avg_pool1d(votes.reshape(b * h, 1, n), kernel, stride=1, padding=kernel // 2).view(b, h, n)
    top = pooled.topk(capacity - window, dim=-1).indices
    recent = torch.arange(P - window, P).expand(b, h, window)
    return torch.cat([top, recent], dim=-1).sort(dim=-1).values


def h2o_keep(q: torch.Tensor, k: torch.Tensor, recent: int, hh: int) -> torch.Tensor:
    """Positions H2O keeps after the prompt, per query head: (B, Hq, hh + recent), ascending."""
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    P = q.shape[2]
    attn = q @ k.transpose(2, 3) / q.shape[-1] ** 0.5
    attn = torch.softmax(attn.masked_fill(torch.ones(P, P, dtype=torch.bool).triu(1), float("-inf")), dim=-1)
    score = attn.sum(dim=-2)                                                              # (B, Hq, P)
    top = score[..., :P - recent].topk(hh, dim=-1).indices
    b, h = top.shape[:2]
    return torch.cat([top, torch.arange(P - recent, P).expand(b, h, recent)], dim=-1).sort(dim=-1).values


def ours_keep(q, k, v, window: int, sparse: int, chunk: int | None = None, scorer: str = "snapkv") -> torch.Tensor:
    cfg = LolaConfig(feature_map="hedgehog", fold=False, window=window, sparse=sparse, sinks=0, scorer=scorer,
                     evict_at="prompt_end", gqa="expanded", chunk=chunk)
    p = testing.make_params(cfg, q.shape[1], k.shape[1], D, dtype=torch.float64)
    st = LolaState()
    lola_chunked(q, k, v, st, p)
    win = st.win_pos.view(1, 1, -1).expand(*st.sp_pos.shape[:2], -1)
    return torch.cat([st.sp_pos, win], dim=-1).sort(dim=-1).values


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("P,window,sparse", [(48, 8, 11), (64, 16, 20), (40, 8, 1)])
def test_prompt_end_snapkv_keeps_what_snapkv_keeps(seed, P, window, sparse):
    torch.manual_seed(seed)
    q, k, v = testing.qkv(P, 4, 2, 1, D, torch.float64)
    q = q * 2.0                                          # peakier attention: the pooled votes spread out more
    assert torch.equal(ours_keep(q, k, v, window, sparse), snapkv_keep(q, k, window, window + sparse))


def test_off_boundary_prompts_hold_the_partial_chunk_exactly():
    """P = 45 with chunk = window = 8: our window holds positions 32..44 (the window of the chunk holding 45), SnapKV's
    37..44; both keep ``sparse`` more pairs, scored on their own candidates."""
    P, window, sparse = 45, 8, 11
    q, k, v = testing.qkv(P, 4, 2, 1, D, torch.float64)
    ours = ours_keep(q, k, v, window, sparse)
    theirs = snapkv_keep(q, k, window, window + sparse)
    assert ours.shape[-1] == sparse + (P - 32) and theirs.shape[-1] == sparse + window
    assert bool((ours[..., -(P - 32):] == torch.arange(32, P)).all())


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("P,window,sparse", [(48, 8, 11), (64, 16, 20)])
def test_prompt_end_h2o_keeps_what_h2o_keeps(seed, P, window, sparse):
    torch.manual_seed(seed)
    q, k, v = testing.qkv(P, 4, 2, 1, D, torch.float64)
    assert torch.equal(ours_keep(q * 2.0, k, v, window, sparse, scorer="attention"),
                       h2o_keep(q * 2.0, k, window, sparse))
