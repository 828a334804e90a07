"""Where a prompt's needle sits in every LoLA layer after prefill, and how much of the last query's attention it gets.

Three pieces, all read from the outside of the attention code (nothing in ``lola_bench.attention`` is changed):

* ``needle_token_positions``: the token positions of each answer string in a RULER prompt (from the tokenizer's
  character offsets; every occurrence, e.g. passkey states its key twice).
* ``Capture``: forward hooks on the model's LoLA layers that hand, for the prefill call of one generation, the
  layer's input and its LolaState *after* prefill (the moment the question, the prompt's last token, has been read
  and the first answer token is chosen) to an analysis function, and time it.
* ``analyse_layer``: for one captured layer, per needle token and storage head whether it is in the window, in the
  sparse cache or folded into the linear state (dropped, under eviction); its rank when it left the window
  (``replay.replay_ranks``); and the split of the last query's combined attention weight over the needle, the rest
  of the window, the rest of the sparse cache and the linear memory (``mass_shares``). Under eviction with
  ``evict_at = prompt_end`` the prompt's last query itself attended with full attention; the split then describes
  the compressed cache that the prefill leaves (what the first decoded token reads).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..attention.common import LolaParams
from ..attention.state import state_dtype
from ..meter import unmetered
from .replay import LeaveRank, replay_ranks


def needle_token_positions(prompt: str, input_ids, answers, tokenizer) -> list[list[list[int]]] | None:
    """For each answer, the token positions of each of its occurrences in ``prompt``: [answer][occurrence][tokens].

    Tokens whose character span overlaps the answer's span count. None when the tokenizer gives no character
    offsets, when re-encoding the prompt does not give ``input_ids`` back, or when an answer does not occur."""
    ids = list(input_ids)
    try:
        for special in (False, True):
            enc = tokenizer(prompt, add_special_tokens=special, return_offsets_mapping=True, verbose=False)
            if list(enc["input_ids"]) == ids:
                break
        else:
            return None
    except (NotImplementedError, TypeError, ValueError, KeyError):
        return None
    offsets = enc["offset_mapping"]
    out = []
    for answer in answers:
        occurrences, start = [], prompt.find(answer)
        while start >= 0:
            end = start + len(answer)
            toks = [i for i, (a, b) in enumerate(offsets) if b > a and a < end and b > start]
            if toks:
                occurrences.append(toks)
            start = prompt.find(answer, end)
        if not occurrences:
            return None
        out.append(occurrences)
    return out


@dataclass
class Captured:
    """One LoLA layer's prefill call: what it was given, and its state right after (positions and (H, s) are read,
    never modified)."""

    module: torch.nn.Module
    hidden: torch.Tensor
    position_embeddings: tuple
    win_pos: torch.Tensor      # (nw,) window positions after prefill
    sp_pos: torch.Tensor       # (Hs, ns) sparse-cache positions after prefill
    H: torch.Tensor            # (Hq, F, d) linear state
    s: torch.Tensor            # (Hq, F)
    n_folded: int
    pos: int                   # tokens seen (the prompt length)


class Capture:
    """``with Capture(lola_modules(model), analyse) as cap: generate(...)``: forward hooks that call
    ``analyse(Captured)`` on the prefill call of each layer (its first call with more than one token), right after
    that layer ran, and keep what it returns in ``cap.layers`` {layer index: result}. Analysing inside the hook
    keeps no activations alive (a long prompt's per-layer inputs would otherwise be held until the end); the time
    spent there (synchronized on CUDA) is summed in ``cap.seconds`` so that callers can take it out of their timings.
    Hooks are removed on exit."""

    def __init__(self, modules, analyse):
        self.modules, self.analyse = list(modules), analyse
        self.layers: dict = {}
        self.seconds = 0.0
        self._handles: list = []

    def _hook(self, module, args, kwargs, output):
        from ..models.cache import LolaCache

        if module.layer_idx in self.layers:
            return
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        pe = kwargs.get("position_embeddings", args[1] if len(args) > 1 else None)
        cache = kwargs.get("cache") or kwargs.get("past_key_values")
        if hidden is None or pe is None or not isinstance(cache, LolaCache) or hidden.shape[1] < 2:
            return
        cuda = hidden.is_cuda
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        st = cache.state(module.layer_idx)
        cap = Captured(module=module, hidden=hidden.detach(), position_embeddings=tuple(t.detach() for t in pe),
                       win_pos=st.win_pos, sp_pos=st.sp_pos[0], H=st.H[0], s=st.s[0], n_folded=int(st.n_folded),
                       pos=int(st.pos))
        with unmetered():           # the analysis' allocations are not the model's peak memory
            self.layers[module.layer_idx] = self.analyse(cap)
        if cuda:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - t0

    def __enter__(self):
        self._handles = [m.register_forward_hook(self._hook, with_kwargs=True) for m in self.modules]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        return False


def _weights(combine: str, factor: torch.Tensor, sm_max, sm_den, lin_den):
    """(alpha, beta) with the combined output = (alpha * sum_j e_j v_j + beta * phi(q)^T H) / (alpha * sm_den +
    beta * lin_den), e_j = exp(logit_j - sm_max): ``attention.common.mix`` written as two weights (eps left out)."""
    if combine == "lola":
        return torch.ones_like(sm_den), torch.exp((-factor - sm_max).clamp(max=80.0))
    if combine == "calibrated":
        return torch.ones_like(sm_den), torch.exp((factor - sm_max).clamp(max=80.0))
    g = torch.sigmoid(factor)
    if combine == "gated":
        return g, 1 - g
    if combine == "lolcats":
        return g, torch.ones_like(g)
    if combine == "normalized":
        return g / sm_den, (1 - g) / lin_den.clamp(min=1e-30)
    raise ValueError(f"unknown combine {combine!r}")


def key_weights(q: torch.Tensor, k: torch.Tensor, exact: torch.Tensor, params: LolaParams,
                lin_den: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One query's combined attention weights: (per key (Hq, P), on the linear memory (Hq,)), summing to 1 per head.

    q (Hq, d): the query; k (Hq, P, d): keys of the P prompt positions (per query head); exact (Hq, P) bool: the
    positions each head attends with softmax (its sparse cache + the window); lin_den (Hq,) = phi(q)^T s, or None
    when nothing has been folded (no linear memory). The combined output is sum_p w_p v_p + w_lin phi(q)^T H /
    phi(q)^T s (``attention.common.mix`` up to its eps)."""
    cd = state_dtype(q.dtype)
    d = q.shape[-1]
    logits = torch.einsum("hd,hpd->hp", q.to(cd), k.to(cd)) * d ** -0.5
    logits = logits.masked_fill(~exact, float("-inf"))
    sm_max = logits.amax(dim=-1)
    e = torch.exp(logits - sm_max.unsqueeze(-1))
    sm_den = e.sum(-1)
    if lin_den is None:
        alpha, beta, lin = torch.ones_like(sm_den), torch.zeros_like(sm_den), torch.zeros_like(sm_den)
    else:
        factor = params.window_factors.detach().to(cd)
        lin = lin_den.to(cd)
        alpha, beta = _weights(params.cfg.combine, factor, sm_max, sm_den, lin)
    total = alpha * sm_den + beta * lin
    return alpha.unsqueeze(-1) * e / total.unsqueeze(-1), beta * lin / total


def mass_shares(q: torch.Tensor, k: torch.Tensor, exact: torch.Tensor, needle: torch.Tensor, in_window: torch.Tensor,
                params: LolaParams, lin_den: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """``key_weights`` summed per tier, per query head (each (Hq,), together 1): {"needle", "window", "sparse",
    "linear"}. needle (P,) bool: needle tokens (counted as needle wherever held); in_window (P,) bool."""
    share, linear = key_weights(q, k, exact, params, lin_den)
    return {"needle": (share * needle).sum(-1),
            "window": (share * (in_window & ~needle)).sum(-1),
            "sparse": (share * (~in_window & ~needle)).sum(-1),
            "linear": linear}


def full_needle_share(q: torch.Tensor, k: torch.Tensor, needle: torch.Tensor) -> torch.Tensor:
    """(Hq,) the needle's share of plain softmax attention of q (Hq, d) over all keys k (Hq, P, d)."""
    cd = state_dtype(q.dtype)
    p = torch.softmax(torch.einsum("hd,hpd->hp", q.to(cd), k.to(cd)) * q.shape[-1] ** -0.5, dim=-1)
    return (p * needle).sum(-1)


@dataclass
class LayerNeedle:
    """One layer's view of the needle. Token lists follow ``tokens`` (sorted needle token positions)."""

    tokens: list[int]
    in_window: list[bool]            # per token
    sparse_by_head: list[list[bool]]  # [storage head][token]: the token is in that head's sparse cache
    ranks: dict[int, LeaveRank] | None   # per token that left the window; None: scorer cannot be replayed
    needle: list[float]              # per query head: combined-weight share on the needle tokens
    window: list[float]
    sparse: list[float]
    linear: list[float]
    full: list[float]                # per query head: needle share under plain softmax over the whole prompt

    @property
    def sparse_heads(self) -> list[float]:
        """Per token: the share of storage heads holding it in the sparse cache."""
        n = len(self.sparse_by_head)
        return [sum(h[i] for h in self.sparse_by_head) / n for i in range(len(self.tokens))]


@torch.no_grad()
def analyse_layer(cap: Captured, tokens: list[int], ranks: bool = True) -> LayerNeedle:
    """Where the needle ``tokens`` are in this layer after prefill, their leave ranks, and the last query's split."""
    m = cap.module
    params = m.params()
    q, k, v = m.project(cap.hidden, cap.position_embeddings)          # (1, Hq|Hkv, L, d)
    L = k.shape[2]
    hq = params.num_heads
    rep = hq // params.num_kv_heads
    kq = k[0].repeat_interleave(rep, dim=0)                            # (Hq, L, d)
    tok = torch.tensor(tokens, dtype=torch.long)
    win = torch.zeros(L, dtype=torch.bool)
    win[cap.win_pos[cap.win_pos < L].cpu()] = True
    hs = cap.sp_pos.shape[0]
    sp = torch.zeros(hs, L, dtype=torch.bool)
    if cap.sp_pos.numel():
        sp.scatter_(1, cap.sp_pos.cpu().clamp(max=L - 1), True)
    exact = (sp | win.view(1, -1)).repeat_interleave(params.group, dim=0)          # (Hq, L) per query head
    needle = torch.zeros(L, dtype=torch.bool)
    needle[tok] = True
    lin_den = None
    qt = q[0, :, -1]                                                               # (Hq, d) the last query
    if cap.n_folded > 0 and params.cfg.fold:
        phi_q = params.feature_map_q(qt.view(1, hq, 1, -1)).to(cap.s.dtype)[0, :, 0]   # (Hq, F)
        lin_den = (phi_q * cap.s.to(phi_q.device)).sum(-1)
    dev = kq.device
    shares = mass_shares(qt, kq, exact.to(dev), needle.to(dev), win.to(dev), params, lin_den)
    full = full_needle_share(qt, kq, needle.to(dev))
    replayed = replay_ranks(k, v, params, tokens) if ranks else None      # None: the scorer reads attention mass
    rr = replayed.ranks if replayed is not None else None
    if rr is not None:
        rr = {p: r for p, r in rr.items() if p in set(tokens)}

    def lst(x):
        return [float(t) for t in x.cpu()]

    return LayerNeedle(tokens=list(tokens), in_window=[bool(win[p]) for p in tokens],
                       sparse_by_head=sp[:, tok].tolist(), ranks=rr,
                       needle=lst(shares["needle"]), window=lst(shares["window"]), sparse=lst(shares["sparse"]),
                       linear=lst(shares["linear"]), full=lst(full))
