"""Primitives shared by the chunked and decode paths: parameters, eviction/merge, block attention, combine.

The shared signature of every path is ``fn(q, k, v, state, params) -> out`` with
q (B, Hq, L, d) and k, v (B, Hkv, L, d) after RoPE, ``state`` a LolaState that is updated in place,
and out (B, Hq, L, d) in q's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError
from .config import LolaConfig
from .feature_maps import FeatureMap
from .scorers import ScoreContext, Scorer, expand_heads
from .state import LolaState, state_dtype


@dataclass
class LolaParams:
    cfg: LolaConfig
    feature_map_q: FeatureMap
    feature_map_k: FeatureMap
    window_factors: torch.Tensor  # (Hq,) logits of the softmax weight
    scorer: Scorer
    num_heads: int
    num_kv_heads: int
    head_dim: int

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise UserError(f"query heads ({self.num_heads}) must be a multiple of KV heads ({self.num_kv_heads})")
        if self.feature_map_q.head_dim != self.head_dim or self.feature_map_k.head_dim != self.head_dim:
            raise UserError(f"feature map head_dim {self.feature_map_q.head_dim} does not match the model's "
                            f"head_dim {self.head_dim}")

    @property
    def group(self) -> int:
        """Query heads per storage head."""
        return self.num_heads // self.num_kv_heads if self.cfg.gqa == "grouped" else 1

    @property
    def storage_heads(self) -> int:
        return self.num_kv_heads if self.cfg.gqa == "grouped" else self.num_heads

    @property
    def feature_dim(self) -> int:
        return self.feature_map_k.feature_dim


def to_storage(x: torch.Tensor, params: LolaParams) -> torch.Tensor:
    """(B, Hkv, L, d) -> (B, Hs, L, d): unchanged in grouped mode, repeated per query head in expanded mode."""
    if params.cfg.gqa == "grouped":
        return x
    return x.repeat_interleave(params.num_heads // params.num_kv_heads, dim=1)


def ensure_state(state: LolaState, k: torch.Tensor, params: LolaParams) -> None:
    if not state.initialized:
        # eviction (fold off) keeps no linear state: H and s are allocated with feature dim 0 (0 bytes)
        state.init(k.shape[0], params.storage_heads, params.num_heads, params.head_dim,
                   params.feature_dim if params.cfg.fold else 0, k.dtype, k.device, params.scorer.needs_attention_mass)


def take_rows(x: torch.Tensor, idx: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x (B, H, N, D) at idx (B, H, n) along N -> (B, H, n, D): ``x.gather(2, idx[..., None].expand(..., D))`` as
    one ``index_select`` of whole rows (torch's gather reads element by element: several times slower on CPU).
    ``out``: a contiguous (B * H * n, D) tensor to write the rows into."""
    b, h, n_rows, dim = x.shape
    flat = idx + (torch.arange(b * h, device=idx.device) * n_rows).view(b, h, 1)
    rows = x.reshape(b * h * n_rows, dim)
    if out is not None:
        return torch.index_select(rows, 0, flat.reshape(-1), out=out).view(b, h, idx.shape[2], dim)
    return rows.index_select(0, flat.reshape(-1)).view(b, h, idx.shape[2], dim)


def split_topk(scores: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the ``keep`` highest scores (ascending, ties to the earlier candidate) and of the rest (highest
    first). On CPU, when fewer leave than stay, the ``n - keep`` lowest are found with one ``topk`` instead of a full
    sort, unless a tie straddles the cut (then the stable sort decides, as always)."""
    m = scores.shape[-1] - keep
    if scores.device.type == "cpu" and 0 < m < keep:
        low, low_i = torch.topk(scores, m + 1, dim=-1, largest=False)       # ascending; NaN counts as highest
        if bool((low[..., m - 1] < low[..., m]).all()):                      # the m lowest are one set: no tie
            kept = torch.ones_like(scores, dtype=torch.bool).scatter_(-1, low_i[..., :m], False)
            idx = kept.nonzero()[:, -1].view(*scores.shape[:-1], keep)
            return idx, low_i[..., :m].flip(-1)
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    return order[..., :keep].sort(dim=-1).values, order[..., keep:]


def fold(state: LolaState, params: LolaParams, phi_k: torch.Tensor, v: torch.Tensor) -> None:
    """Add sum_j phi(k_j) v_j^T to H and sum_j phi(k_j) to s. phi_k (B, Hq, n, F), v (B, Hs, n, d)."""
    sd = state.H.dtype
    phi = phi_k.to(sd)
    state.H += torch.matmul(phi.transpose(-1, -2), expand_heads(v, params.group).to(sd))
    state.s += phi.sum(dim=2)


def leaving_count(state: LolaState, window_start: int) -> int:
    """How many window pairs lie before ``window_start``. The window is contiguous and ends at ``state.pos - 1``,
    so this is host arithmetic (no device sync)."""
    nw = state.win_k.shape[2]
    return max(0, min(nw, window_start - (state.pos - nw)))


def pop_candidates(state: LolaState, n_ev: int):
    """Remove the ``n_ev`` oldest window pairs; return (cached + leaving) keys, values, positions."""
    b, hs = state.win_k.shape[:2]
    ev_k, ev_v = state.win_k[:, :, :n_ev], state.win_v[:, :, :n_ev]
    ev_pos = state.win_pos[:n_ev].view(1, 1, n_ev).expand(b, hs, n_ev)
    state.win_k, state.win_v = state.win_k[:, :, n_ev:], state.win_v[:, :, n_ev:]
    state.win_pos = state.win_pos[n_ev:]
    return (torch.cat([state.sp_k, ev_k], dim=2), torch.cat([state.sp_v, ev_v], dim=2),
            torch.cat([state.sp_pos, ev_pos], dim=2))


@dataclass
class Candidates:
    """The pairs competing for the sparse cache at one chunk boundary, in position order: the cached pairs, then the
    ``n_leaving`` pairs leaving the window. ``keep`` of them stay (``LolaConfig.keep``), the others are folded."""
    k: torch.Tensor            # (B, Hs, n, d)
    v: torch.Tensor            # (B, Hs, n, d)
    pos: torch.Tensor          # (B, Hs, n)
    acc: torch.Tensor | None   # (B, Hs, n) attention mass, when tracked
    n_leaving: int
    keep: int

    @property
    def n(self) -> int:
        return self.k.shape[2]


def take_candidates(state: LolaState, params: LolaParams, window_start: int) -> Candidates | None:
    """The host bookkeeping of a chunk boundary, shared by ``evict_before`` and the Triton merge: pop the window pairs
    older than ``window_start`` and put them behind the sparse cache. Returns None when there is nothing to choose
    (no pair leaves, or every candidate fits in the cache, which then holds them all)."""
    n_ev = leaving_count(state, window_start)
    if n_ev == 0:
        return None
    cand_k, cand_v, cand_pos = pop_candidates(state, n_ev)
    cand_acc = None
    if state.win_acc is not None:
        cand_acc = torch.cat([state.sp_acc, state.win_acc[:, :, :n_ev]], dim=2)
        state.win_acc = state.win_acc[:, :, n_ev:]
    keep = params.cfg.keep(window_start, cand_k.shape[2])
    if keep == cand_k.shape[2]:  # everything fits in the sparse cache: nothing to score or fold
        state.sp_k, state.sp_v, state.sp_pos, state.sp_acc = cand_k, cand_v, cand_pos, cand_acc
        return None
    return Candidates(cand_k, cand_v, cand_pos, cand_acc, n_ev, keep)


def keep_selected(state: LolaState, cand: Candidates, idx: torch.Tensor) -> None:
    """The candidates at ``idx`` (B, Hs, keep), ascending, become the sparse cache."""
    state.sp_k, state.sp_v = take_rows(cand.k, idx), take_rows(cand.v, idx)
    state.sp_pos = cand.pos.gather(2, idx)
    if cand.acc is not None:
        state.sp_acc = cand.acc.gather(2, idx)


def prompt_compressed(state: LolaState, params: LolaParams) -> bool:
    """True once an ``evict_at = prompt_end`` state holds its compressed prompt (it has read its first call): from then
    on nothing is ever evicted again. Every later pair (continuation calls, decode steps) joins the window, which
    grows by one pair per token, and every query attends to all of it (plus the kept prompt pairs). The callers of
    ``evict_before`` (chunk loop, decode step) skip it for such a state; the batched path refuses it."""
    return params.cfg.evict_at == "prompt_end" and state.pos > 0


def evict_before(state: LolaState, params: LolaParams, window_start: int) -> None:
    """Move window pairs older than ``window_start`` out: the best ``sparse`` of (cache + leaving) stay, the rest are
    folded into the linear state, or dropped when ``cfg.fold`` is off (eviction)."""
    boundary = leaving_count(state, window_start) > 0
    cand = take_candidates(state, params, window_start)
    if cand is not None:
        _select(state, params, cand, window_start)
    if boundary and params.scorer.mass_per_chunk:  # the next boundary scores the mass of the next chunk only
        state.sp_acc, state.win_acc = torch.zeros_like(state.sp_acc), torch.zeros_like(state.win_acc)


def _select(state: LolaState, params: LolaParams, cand: Candidates, window_start: int) -> None:
    # every position below window_start has left the window: the sinks among them are pinned
    idx = choose_and_fold(state, params, cand.k, cand.v, cand.pos, cand.acc, cand.keep,
                          min(params.cfg.sinks, window_start))
    if params.cfg.fold:
        state.n_folded += cand.n - cand.keep
    keep_selected(state, cand, idx)


def choose_and_fold(state, params: LolaParams, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor,
                    acc: torch.Tensor | None, keep: int, sinks: int) -> torch.Tensor:
    """The selection of a chunk boundary: score the candidates (B, Hs, n, ...) in position order against the linear
    state (``state.H``, ``state.s``: a ``LolaState`` or a static state), pin those below ``sinks``, keep the
    ``keep`` best (``split_topk``) and fold the rest into (H, s) in place (nothing under eviction; ``keep = 0``:
    every candidate, in order, unscored). Returns the kept candidates' indices (B, Hs, keep), ascending. Shared by
    ``evict_before`` and the in-place merge (``static_merge``)."""
    fold_on = params.cfg.fold
    phi_k = params.feature_map_k(expand_heads(k, params.group)).to(state.H.dtype) if fold_on else None   # fp32
    if keep == 0:
        if fold_on:
            fold(state, params, phi_k, v)
        return torch.zeros(*pos.shape[:2], 0, dtype=torch.long, device=pos.device)
    ctx = ScoreContext(k=k, v=v, pos=pos, phi_k=phi_k, H=state.H if fold_on else None,
                       s=state.s if fold_on else None, acc=acc, group=params.group, eps=params.cfg.eps,
                       seed=params.cfg.seed)
    scores = params.scorer.score(ctx)
    if sinks:
        scores = scores.masked_fill(pos < sinks, float("inf"))
    idx, out_idx = split_topk(scores, keep)
    if fold_on:
        fold(state, params, take_rows(phi_k, expand_heads(out_idx, params.group)), take_rows(v, out_idx))
    return idx


def append_window(state: LolaState, params: LolaParams, k: torch.Tensor, v: torch.Tensor) -> None:
    n = k.shape[2]
    state.win_k = torch.cat([state.win_k, to_storage(k, params)], dim=2)
    state.win_v = torch.cat([state.win_v, to_storage(v, params)], dim=2)
    new_pos = torch.arange(state.pos, state.pos + n, device=k.device)
    state.win_pos = torch.cat([state.win_pos, new_pos])
    if state.win_acc is not None:
        state.win_acc = torch.cat([state.win_acc, state.win_acc.new_zeros(*state.win_acc.shape[:2], n)], dim=2)
    state.pos += n


def mix(combine: str, factor, sm_num, sm_den, lin_num, lin_den, eps: float, sm_max):
    """The combine formulas. ``factor``: window-factor logits broadcastable to the dens (trailing singleton dim),
    ``sm_max``: the max logit q.k/sqrt(d) the softmax sums were shifted by (same shape as the dens).

    gated:      y = (g*sm_num + (1-g)*lin_num) / (g*sm_den + (1-g)*lin_den + eps),   g = sigmoid(factor)
    lolcats:    y = (g*sm_num + lin_num) / (g*sm_den + lin_den + eps)                (LoLCATs' window_factor)
    normalized: y = g * sm_num/sm_den + (1-g) * lin_num/(lin_den + eps)
    calibrated: y = (sm_num + w*lin_num) / (sm_den*(1+eps) + w*lin_den),          w = exp(factor - sm_max)
    lola:       y = (g*S*v + (1-g)*phi(q)^T H) / (g*S + (1-g)*phi(q)^T s + eps),  S = sum_j exp(q.k_j/sqrt d)
                (the LoLA authors' formula, unshifted sum, eps where theirs is; computed shifted, so it never
                overflows: it equals calibrated with the factor negated, up to where eps sits)
    sm_* are max-subtracted exp sums (sm_den >= 1). 'calibrated' and 'lola' depend on the shift only through
    sm_max, so any shift works (the CPU block path shifts by the log-sum-exp: sm_den = 1) as long as the weight's
    exponent stays inside its clamp at 80; 'calibrated' keeps its eps relative to the softmax sum for that reason (it
    only guards the division). In 'gated' and 'lolcats' the softmax
    part has the same weight whether its best key matches the query strongly or barely, while lin_den grows with the
    number of folded pairs: at long context the linear memory drowns exact matches. 'normalized' averages
    each memory on its own and mixes them with a fixed per-head weight. 'calibrated' undoes the shift, so the
    sum is sum_j exp(q.k_j/sqrt d) v_j + exp(factor) * phi(q)^T H: the paper's unshifted form, exact when
    exp(factor) phi(q).phi(k) = exp(q.k/sqrt d); a strong match in the exact memories outweighs the linear one.
    """
    if combine == "calibrated":
        w = torch.exp((factor - sm_max).clamp(max=80.0))
        return (sm_num + w * lin_num) / (sm_den * (1 + eps) + w * lin_den)
    if combine == "lola":
        # (g*S*v + (1-g)*phi.H) / (g*S + (1-g)*phi.s + eps) with S = e^m * sm_den, divided through by g*e^m:
        # the linear weight is (1-g)/g * e^-m = e^(-factor-m), eps becomes eps*e^-m/g (no overflow past logit 88)
        w = torch.exp((-factor - sm_max).clamp(max=80.0))
        eps_m = eps * torch.exp((-sm_max).clamp(max=80.0)) * (1 + torch.exp(-factor))
        return (sm_num + w * lin_num) / (sm_den + w * lin_den + eps_m)
    g = torch.sigmoid(factor)
    if combine == "gated":
        return (g * sm_num + (1 - g) * lin_num) / (g * sm_den + (1 - g) * lin_den + eps)
    if combine == "lolcats":
        return (g * sm_num + lin_num) / (g * sm_den + lin_den + eps)
    return g * (sm_num / sm_den) + (1 - g) * (lin_num / (lin_den + eps))


def combine(params: LolaParams, sm_num, sm_den, lin_num, lin_den, sm_max):
    """Mix the softmax part (exp sums shifted by ``sm_max``) with the linear part (see ``mix``). Dens and
    sm_max are (B, Hq, L). With nothing folded into the linear state yet (lin_num is None) this is exact
    softmax attention."""
    if lin_num is None:
        return sm_num / sm_den.unsqueeze(-1)
    factor = params.window_factors.to(sm_num.dtype).view(1, -1, 1, 1)
    return mix(params.cfg.combine, factor, sm_num, sm_den.unsqueeze(-1), lin_num, lin_den.unsqueeze(-1),
               params.cfg.eps, sm_max.unsqueeze(-1))


def attend(q: torch.Tensor, state: LolaState, params: LolaParams, q_start: int, causal: bool) -> torch.Tensor:
    """Output for queries at positions q_start.. over sparse + window (softmax) and the linear state.

    The window must already hold the queries' own keys. Accumulates attention mass when tracked.
    """
    b, hq, lq, d = q.shape
    g = params.group
    hs = params.storage_heads
    cd = state_dtype(q.dtype)
    keys = torch.cat([state.sp_k, state.win_k], dim=2).to(cd)
    vals = torch.cat([state.sp_v, state.win_v], dim=2).to(cd)
    ns = state.sp_k.shape[2]
    qg = q.to(cd).reshape(b, hs, g * lq, d)  # query heads of one storage head are contiguous
    logits = torch.matmul(qg, keys.transpose(-1, -2)) * (d ** -0.5)
    if causal and lq > 1:
        qpos = torch.arange(q_start, q_start + lq, device=q.device).repeat(g)
        future = state.win_pos.view(1, -1) > qpos.view(-1, 1)
        logits[..., ns:].masked_fill_(future, float("-inf"))
    sm_max = logits.amax(dim=-1, keepdim=True)
    e = torch.exp(logits - sm_max)
    sm_den = e.sum(dim=-1)
    sm_num = torch.matmul(e, vals)
    if state.win_acc is not None:
        mass = (e / sm_den.unsqueeze(-1)).sum(dim=2) / g
        state.sp_acc += mass[..., :ns]
        state.win_acc += mass[..., ns:]
    sm_num = sm_num.reshape(b, hq, lq, d)
    sm_den = sm_den.reshape(b, hq, lq)
    sm_max = sm_max.reshape(b, hq, lq)
    lin_num = lin_den = None
    if state.n_folded > 0:
        phi_q = params.feature_map_q(q).to(cd)
        lin_num = torch.matmul(phi_q, state.H)
        lin_den = torch.einsum("bhlf,bhf->bhl", phi_q, state.s)
    return combine(params, sm_num, sm_den, lin_num, lin_den, sm_max).to(q.dtype)
