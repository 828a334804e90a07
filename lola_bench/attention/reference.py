"""The specification: LoLA on a whole sequence with dense masks (quadratic, slow, obviously correct).

For every chunk it decides which keys are in the sparse cache and which are folded into the linear
state (by scoring candidates against a state rebuilt from scratch from the linear mask), then computes
every query's output from explicit (query x key) masks:
  softmax part: keys in the sparse set (the first ``sinks`` positions always among them) or in the window
                [window_start(c), t]
  linear part:  keys in the linear set, weighted by phi_q(q_t) . phi_k(k_j)
With ``cfg.fold`` off (eviction) the keys that are not kept join no linear set: they are dropped, the linear
state stays empty (feature dim 0) and every output is softmax over the sparse set and the window alone.
The scorer sees the candidates only, gathered in position order (as the fast paths hand them over).
It shares only the feature maps, scorers and config with the fast paths; it never calls them.

``prompt_len`` P says how many of the L tokens the first call reads (the prompt); the rest are read afterwards, by
decode steps or later calls (boundary mode gives the same result however they are split). It matters only for
``cfg.evict_at == "prompt_end"`` (default P = L: the whole sequence is the prompt). There the P prompt queries get
exact causal softmax over all keys; then one compression: the candidates are every position below
ws = ``window_start(P // chunk)`` (the chunk holding the next position), ``cfg.keep`` of them stay (sinks pinned),
scored with the attention mass of full attention: ``attention`` (H2O) the mass from all P queries, ``snapkv`` the
mass from the last ``window`` queries (the observation window), both averaged over the query heads of a storage head.
That is the only eviction (SnapKV's and kvpress's protocol): every query t >= P attends with softmax to the kept
pairs plus every key j with ws <= j <= t (the window no longer slides: it keeps every later token). No chunk
boundary is run after the prompt, and no mass is carried on (``acc`` is None).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .common import LolaParams, mix
from .scorers import ScoreContext
from .state import state_dtype


@dataclass
class ReferenceResult:
    out: torch.Tensor          # (B, Hq, L, d)
    sparse_pos: torch.Tensor   # (B, Hs, ns) positions in the sparse cache at the end, ascending
    H: torch.Tensor            # (B, Hq, F, d) final linear state
    s: torch.Tensor            # (B, Hq, F)
    acc: torch.Tensor | None   # (B, Hs, L) attention mass per position at the end, as a state tracks it (scorers
                               # attention, snapkv; SnapKV's since the last boundary); None under prompt_end


def _expand(x: torch.Tensor, g: int) -> torch.Tensor:
    return x if g == 1 else x.repeat_interleave(g, dim=1)


def _group_mass(p: torch.Tensor, hs: int) -> torch.Tensor:
    """(B, Hq, Lq, L) attention probabilities -> (B, Hs, L) summed over the queries, averaged over a storage head's
    query heads."""
    b, hq, _, L = p.shape
    return p.sum(dim=2).view(b, hs, hq // hs, L).mean(dim=2)


def lola_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, params: LolaParams,
                   prompt_len: int | None = None) -> ReferenceResult:
    cfg = params.cfg
    b, hq, L, d = q.shape
    cd = state_dtype(q.dtype)
    rep = hq // k.shape[1]
    gs = params.group                       # query heads per storage head
    ks = k if cfg.gqa == "grouped" else k.repeat_interleave(rep, dim=1)   # (B, Hs, L, d)
    vs = v if cfg.gqa == "grouped" else v.repeat_interleave(rep, dim=1)
    hs = ks.shape[1]
    kq, vq = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # per query head
    if cfg.fold:
        phi_k = params.feature_map_k(kq).to(cd)          # (B, Hq, L, F)
        phi_q = params.feature_map_q(q).to(cd)
        lin_scores = torch.matmul(phi_q, phi_k.transpose(-1, -2))                   # (B, Hq, L, L)
    else:                                                # eviction: no feature map, no linear state
        phi_k = q.new_zeros(b, hq, L, 0, dtype=cd)
    logits = torch.matmul(q.to(cd), kq.to(cd).transpose(-1, -2)) * d ** -0.5   # (B, Hq, L, L)
    vq = vq.to(cd)
    pos = torch.arange(L, device=q.device)
    sparse = torch.zeros(b, hs, L, dtype=torch.bool, device=q.device)
    lin = torch.zeros_like(sparse)
    acc = torch.zeros(b, hs, L, dtype=cd, device=q.device)
    out = torch.empty(b, hq, L, d, dtype=cd, device=q.device)
    factor = params.window_factors.to(cd).view(1, -1, 1, 1)
    evicted_upto = 0

    def linear_state():
        w = _expand(lin.to(cd), gs)
        return (torch.einsum("bhlf,bhl,bhld->bhfd", phi_k, w, vq), torch.einsum("bhlf,bhl->bhf", phi_k, w))

    C = cfg.chunk_size
    if cfg.evict_at == "prompt_end":
        sparse = _prompt_end(params, q, ks, vs, logits, vq, out, sparse, prompt_len)
        H, s = linear_state()
        return ReferenceResult(out=out.to(q.dtype), sparse_pos=_positions(sparse), H=H, s=s, acc=None)
    for c in range((L + C - 1) // C):
        ws = cfg.window_start(c)
        if ws > evicted_upto:
            cand = sparse | ((pos >= evicted_upto) & (pos < ws)).view(1, 1, L)
            n = int(cand[0, 0].sum())
            keep = cfg.keep(ws, n)
            if keep == n:
                sparse = cand
            else:
                new_sparse = torch.zeros_like(sparse)
                if keep > 0:
                    H, s = linear_state() if cfg.fold else (None, None)
                    ci = torch.sort(torch.where(cand, pos.view(1, 1, L), L), dim=-1).values[..., :n]  # (B, Hs, n)
                    gk = ci.unsqueeze(-1).expand(-1, -1, -1, d)
                    ctx = ScoreContext(k=ks.gather(2, gk), v=vs.gather(2, gk), pos=ci,
                                       phi_k=phi_k.gather(2, _expand(ci, gs).unsqueeze(-1).expand(
                                           -1, -1, -1, phi_k.shape[-1])) if cfg.fold else None,
                                       H=H, s=s, acc=acc.gather(2, ci), group=gs, eps=cfg.eps, seed=cfg.seed)
                    sc = params.scorer.score(ctx).to(cd).masked_fill(ci < cfg.sinks, float("inf"))
                    top = torch.sort(sc, dim=-1, descending=True, stable=True).indices[..., :keep]
                    new_sparse.scatter_(-1, ci.gather(-1, top), True)
                if cfg.fold:
                    lin = lin | (cand & ~new_sparse)
                sparse = new_sparse
            if params.scorer.mass_per_chunk:  # snapkv: mass from the queries of the last chunk only
                acc.zero_()
            evicted_upto = ws
        t0, t1 = c * C, min((c + 1) * C, L)
        if t0 >= t1:
            continue
        tq = pos[t0:t1].view(-1, 1)
        window = (pos.view(1, -1) >= ws) & (pos.view(1, -1) <= tq)                 # (Lc, L)
        soft = _expand(sparse, gs).unsqueeze(2) | window.view(1, 1, t1 - t0, L)  # (B, Hq, Lc, L)
        lg = logits[:, :, t0:t1].masked_fill(~soft, float("-inf"))
        sm_max = lg.amax(dim=-1, keepdim=True)
        e = torch.exp(lg - sm_max)
        sm_num, sm_den = torch.matmul(e, vq), e.sum(-1, keepdim=True)
        mass = (e / sm_den).sum(dim=2)                                              # (B, Hq, L)
        acc += mass.view(b, hs, gs, L).sum(dim=2) / gs
        if cfg.fold and lin.any():
            a = lin_scores[:, :, t0:t1] * _expand(lin.to(cd), gs).unsqueeze(2)
            lin_num, lin_den = torch.matmul(a, vq), a.sum(-1, keepdim=True)
            y = mix(cfg.combine, factor, sm_num, sm_den, lin_num, lin_den, cfg.eps, sm_max)
        else:
            y = sm_num / sm_den
        out[:, :, t0:t1] = y
    H, s = linear_state()
    return ReferenceResult(out=out.to(q.dtype), sparse_pos=_positions(sparse), H=H, s=s, acc=acc)


def _positions(sparse: torch.Tensor) -> torch.Tensor:
    """(B, Hs, L) kept mask -> (B, Hs, ns) kept positions, ascending (every head keeps as many)."""
    L = sparse.shape[-1]
    pos = torch.arange(L, device=sparse.device).view(1, 1, L)
    return torch.sort(torch.where(sparse, pos, L), dim=-1).values[..., :int(sparse[0, 0].sum())]


def _prompt_end(params: LolaParams, q, ks, vs, logits, vq, out, sparse, prompt_len):
    """``evict_at = prompt_end`` (see the module doc): fills ``out`` and returns the kept mask (B, Hs, L)."""
    cfg = params.cfg
    b, hq, L, d = q.shape
    hs, gs, cd = ks.shape[1], params.group, logits.dtype
    pos = torch.arange(L, device=q.device)
    P = L if prompt_len is None else prompt_len
    if not 1 <= P <= L:
        raise ValueError(f"prompt_len must be in 1..{L}, got {P}")
    causal = pos.view(-1, 1) >= pos.view(1, -1)
    probs = torch.softmax(logits[:, :, :P, :P].masked_fill(~causal[:P, :P], float("-inf")), dim=-1)
    out[:, :, :P] = torch.matmul(probs, vq[:, :, :P])              # exact full attention for the whole prompt
    mass = torch.zeros(b, hs, L, dtype=cd, device=q.device)
    # snapkv: the observation window = the prompt's last ``window`` queries; H2O: every prompt query
    mass[..., :P] = _group_mass(probs[:, :, max(0, P - cfg.window) if params.scorer.mass_per_chunk else 0:], hs)
    ws = cfg.window_start(P // cfg.chunk_size)
    keep = cfg.keep(ws, ws)
    sparse[..., :ws] = True
    if keep < ws:                                                   # the one selection, among every position < ws
        ci = pos[:ws].view(1, 1, ws).expand(b, hs, ws)
        gk = ci.unsqueeze(-1).expand(-1, -1, -1, d)
        ctx = ScoreContext(k=ks.gather(2, gk), v=vs.gather(2, gk), pos=ci, phi_k=None, H=None, s=None,
                           acc=mass[..., :ws], group=gs, eps=cfg.eps, seed=cfg.seed)
        sc = params.scorer.score(ctx).to(cd).masked_fill(ci < cfg.sinks, float("inf"))
        top = torch.sort(sc, dim=-1, descending=True, stable=True).indices[..., :keep]
        sparse = torch.zeros_like(sparse).scatter_(-1, top, True)
    if P < L:                  # every later query: the kept pairs + every key from ws up to itself, nothing evicted
        seen = _expand(sparse, gs).unsqueeze(2) | (causal[P:] & (pos >= ws).view(1, -1)).view(1, 1, L - P, L)
        later = torch.softmax(logits[:, :, P:].masked_fill(~seen, float("-inf")), dim=-1)
        out[:, :, P:] = torch.matmul(later, vq)
    return sparse
