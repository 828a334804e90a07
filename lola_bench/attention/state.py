"""LolaState: everything one attention layer remembers between calls, and its byte accounting.

Tensors (Hs = storage heads: KV heads in grouped GQA mode, query heads in expanded mode):
  win_k, win_v  (B, Hs, nw, d)   local window, positions ``win_pos`` (nw,) shared by all heads (contiguous, ending at
                                 pos - 1; under ``evict_at = prompt_end`` it grows after the prompt's compression)
  sp_k, sp_v    (B, Hs, ns, d)   sparse cache, positions ``sp_pos`` (B, Hs, ns), kept in position order
  H             (B, Hq, F, d)    linear state  sum phi(k) v^T   (float32, float64 for float64 inputs)
  s             (B, Hq, F)       normaliser    sum phi(k)
  win_acc, sp_acc (B, Hs, n)     accumulated attention mass (scorers attention and snapkv; None after a prompt_end
                                 compression)
Feature-mapped keys are recomputed when needed (never cached), so that tier is always 0 bytes. Under eviction
(``LolaConfig.fold`` off) H and s have feature dim 0: the state tier is 0 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import LolaConfig


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass
class LolaState:
    pos: int = 0                       # tokens seen so far
    n_folded: int = 0                  # tokens folded into the linear state so far
    win_k: torch.Tensor | None = None
    win_v: torch.Tensor | None = None
    win_pos: torch.Tensor | None = None
    sp_k: torch.Tensor | None = None
    sp_v: torch.Tensor | None = None
    sp_pos: torch.Tensor | None = None
    H: torch.Tensor | None = None
    s: torch.Tensor | None = None
    win_acc: torch.Tensor | None = None
    sp_acc: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)

    @property
    def initialized(self) -> bool:
        return self.win_k is not None

    def init(self, batch: int, storage_heads: int, query_heads: int, head_dim: int, feature_dim: int,
             dtype: torch.dtype, device, track_attention: bool) -> None:
        sd = state_dtype(dtype)
        kv = dict(dtype=dtype, device=device)
        self.win_k = torch.zeros(batch, storage_heads, 0, head_dim, **kv)
        self.win_v = torch.zeros(batch, storage_heads, 0, head_dim, **kv)
        self.win_pos = torch.zeros(0, dtype=torch.long, device=device)
        self.sp_k = torch.zeros(batch, storage_heads, 0, head_dim, **kv)
        self.sp_v = torch.zeros(batch, storage_heads, 0, head_dim, **kv)
        self.sp_pos = torch.zeros(batch, storage_heads, 0, dtype=torch.long, device=device)
        self.H = torch.zeros(batch, query_heads, feature_dim, head_dim, dtype=sd, device=device)
        self.s = torch.zeros(batch, query_heads, feature_dim, dtype=sd, device=device)
        if track_attention:
            self.win_acc = torch.zeros(batch, storage_heads, 0, dtype=sd, device=device)
            self.sp_acc = torch.zeros(batch, storage_heads, 0, dtype=sd, device=device)

    def nbytes_by_tier(self) -> dict[str, int]:
        """Bytes actually held, per tier: window K/V, sparse K/V, linear state, phi(k) (0), aux (positions, mass)."""
        def nb(*ts):
            return sum(t.numel() * t.element_size() for t in ts if t is not None)

        return {
            "window": nb(self.win_k, self.win_v),
            "sparse": nb(self.sp_k, self.sp_v),
            "state": nb(self.H, self.s),
            "phi_k": 0,
            "aux": nb(self.win_pos, self.sp_pos, self.win_acc, self.sp_acc),
        }


def analytic_bytes(cfg: LolaConfig, seq_len: int, *, batch: int, query_heads: int, kv_heads: int, head_dim: int,
                   feature_dim: int, dtype: torch.dtype, layers: int = 1,
                   prompt_len: int | None = None) -> dict[str, int]:
    """Cache bytes after ``seq_len`` tokens, computed from the config alone (must equal LolaState.nbytes_by_tier).

    Under ``evict_at = prompt_end`` the first ``prompt_len`` tokens (default: all ``seq_len``) are the prompt: the
    cache is the one compression at its end (window from ws = ``window_start(prompt_len // chunk)``, ``keep(ws, ws)``
    sparse pairs) plus every later token in the window, and no attention mass. Otherwise ``prompt_len`` is ignored
    (the boundary rule gives the same cache however the tokens were split into calls)."""
    if seq_len <= 0:
        return {"window": 0, "sparse": 0, "state": 0, "phi_k": 0, "aux": 0}
    hs = kv_heads if cfg.gqa == "grouped" else query_heads
    elt = torch.empty(0, dtype=dtype).element_size()
    selt = torch.empty(0, dtype=state_dtype(dtype)).element_size()
    if cfg.evict_at == "prompt_end":
        P = seq_len if prompt_len is None else prompt_len
        if not 1 <= P <= seq_len:
            raise ValueError(f"prompt_len must be in 1..{seq_len}, got {P}")
        ws = cfg.window_start(P // cfg.chunk_size)   # the compression; every later token stays in the window
        track = False                                # nothing is evicted after it: no mass is held
    else:
        ws = cfg.window_start((seq_len - 1) // cfg.chunk_size)
        track = cfg.scorer in ("attention", "snapkv")   # the scorers that need attention mass
    nw = seq_len - ws
    ns = cfg.keep(ws, ws)  # every position below ws is a candidate
    out = {
        "window": 2 * batch * hs * nw * head_dim * elt,
        "sparse": 2 * batch * hs * ns * head_dim * elt,
        "state": batch * query_heads * feature_dim * (head_dim + 1) * selt if cfg.fold else 0,
        "phi_k": 0,
        "aux": nw * 8 + batch * hs * ns * 8 + (batch * hs * (nw + ns) * selt if track else 0),
    }
    return {k: v * layers for k, v in out.items()}


def full_kv_bytes(seq_len: int, *, batch: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                  layers: int = 1) -> int:
    """Bytes of a full-attention KV cache holding ``seq_len`` tokens."""
    elt = torch.empty(0, dtype=dtype).element_size()
    return 2 * batch * kv_heads * seq_len * head_dim * elt * layers
