"""Replay LoLA's chunk-boundary selection for one layer from its keys and values, to rank given tokens when they leave.

The fast paths keep no scores, so the rank a token had among the candidates when it left the window is recomputed
here from the outside: the selection of ``attention.reference`` (the specification) is run again over the layer's
post-RoPE keys and values of the prompt, boundary by boundary, with the layer's own scorer, feature map and config:
candidates = the sparse cache + the pairs leaving the window, in position order; the first ``sinks`` positions score
+inf; the ``LolaConfig.keep`` best stay (stable sort, ties to the earlier position); the rest are folded into
(H, s) (dropped under eviction). The linear state is kept as running sums, as the fast paths keep it.

Under ``evict_at = prompt_end`` there is one selection only, at the end of the prompt (every position below the window
start of the chunk holding the next position competes), and that is what is replayed.

Scorers that need the attention mass every query paid (``attention``, ``snapkv``) cannot be replayed from keys and
values alone: ``replay_ranks`` returns None for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..attention.common import LolaParams
from ..attention.scorers import ScoreContext, expand_heads
from ..attention.state import state_dtype


@dataclass
class LeaveRank:
    """One token's standing at the boundary where it left the window, per storage head."""

    boundary: int             # window start of that boundary (the token's position is below it)
    rank: list[int]           # (Hs,) 1-based rank among the candidates (1 = best score), per storage head
    candidates: int           # how many pairs competed (sparse cache + leaving pairs)
    keep: int                 # how many of them stayed in the sparse cache


@dataclass
class ReplayResult:
    ranks: dict[int, LeaveRank] = field(default_factory=dict)   # position -> its rank when it left the window
    sparse_pos: torch.Tensor | None = None   # (Hs, ns) the sparse cache after the last boundary replayed
    boundaries: int = 0                       # boundaries replayed


def replayable(params: LolaParams) -> bool:
    return not params.scorer.needs_attention_mass


@torch.no_grad()
def replay_ranks(k: torch.Tensor, v: torch.Tensor, params: LolaParams, positions, *,
                 full: bool = False) -> ReplayResult | None:
    """Ranks of ``positions`` (token positions of the prompt) at the boundary where each left the window.

    k, v: (1, Hkv, L, d) post-RoPE keys and values of one layer for the L prompt tokens. Stops after the boundary at
    which the last of ``positions`` left (``full``: replay every boundary of the prompt, e.g. to compare the final
    sparse cache with the real state). Returns None when the scorer cannot be replayed (see module doc)."""
    if not replayable(params):
        return None
    cfg = params.cfg
    if k.shape[0] != 1:
        raise ValueError("replay_ranks takes one sequence (batch 1)")
    rep = params.num_heads // params.num_kv_heads
    ks = k if cfg.gqa == "grouped" else k.repeat_interleave(rep, dim=1)      # (1, Hs, L, d)
    vs = v if cfg.gqa == "grouped" else v.repeat_interleave(rep, dim=1)
    hs, L, d = ks.shape[1], ks.shape[2], ks.shape[3]
    g = params.group
    sd = state_dtype(k.dtype)
    fold_on = cfg.fold
    fdim = params.feature_dim if fold_on else 0
    H = torch.zeros(1, params.num_heads, fdim, d, dtype=sd, device=k.device)
    s = torch.zeros(1, params.num_heads, fdim, dtype=sd, device=k.device)
    sparse = torch.zeros(1, hs, 0, dtype=torch.long, device=k.device)
    wanted = sorted({int(p) for p in positions if 0 <= int(p) < L})
    out = ReplayResult()
    C = cfg.chunk_size
    evicted_upto = 0
    if cfg.evict_at == "prompt_end":   # one compression after the full-attention prefill
        starts = [cfg.window_start(L // C)] if L else []
    else:                              # every chunk boundary of the prompt
        starts = [cfg.window_start(c) for c in range((L - 1) // C + 1 if L else 0)]
    for ws in starts:
        if ws <= evicted_upto:
            continue
        if not full and (not wanted or wanted[-1] < evicted_upto):
            break
        leaving = torch.arange(evicted_upto, ws, device=k.device).view(1, 1, -1).expand(1, hs, -1)
        cand = torch.cat([sparse, leaving], dim=2)                              # (1, Hs, n), position order
        n = cand.shape[2]
        keep = cfg.keep(ws, n)
        here = [p for p in wanted if evicted_upto <= p < ws]
        out.boundaries += 1
        if keep == n and not here:
            sparse, evicted_upto = cand, ws
            continue
        gk = cand.unsqueeze(-1).expand(-1, -1, -1, d)
        ck, cv = ks.gather(2, gk), vs.gather(2, gk)
        phi_k = params.feature_map_k(expand_heads(ck, g)).to(sd) if fold_on else None
        ctx = ScoreContext(k=ck, v=cv, pos=cand, phi_k=phi_k, H=H if fold_on else None, s=s if fold_on else None,
                           acc=None, group=g, eps=cfg.eps, seed=cfg.seed)
        scores = params.scorer.score(ctx).masked_fill(cand < min(cfg.sinks, ws), float("inf"))
        order = torch.sort(scores, dim=-1, descending=True, stable=True).indices          # (1, Hs, n)
        if here:
            rank = torch.empty_like(order)
            rank.scatter_(-1, order, torch.arange(1, n + 1, device=k.device).view(1, 1, -1).expand(1, hs, -1))
            for p in here:
                col = n - (ws - p)                                              # the leaving pairs close the list
                out.ranks[p] = LeaveRank(boundary=ws, rank=[int(r) for r in rank[0, :, col]], candidates=n,
                                         keep=keep)
        if keep == n:
            sparse = cand
        else:
            kept = order[..., :keep].sort(dim=-1).values
            gone = order[..., keep:]
            if fold_on:
                gq = expand_heads(gone, g).unsqueeze(-1)
                phi = phi_k.gather(2, gq.expand(-1, -1, -1, phi_k.shape[-1]))
                val = expand_heads(cv.gather(2, gone.unsqueeze(-1).expand(-1, -1, -1, d)), g).to(sd)
                H += torch.matmul(phi.transpose(-1, -2), val)
                s += phi.sum(dim=2)
            sparse = cand.gather(2, kept)
        evicted_upto = ws
    out.sparse_pos = sparse[0]
    return out
