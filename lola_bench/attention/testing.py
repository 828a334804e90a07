"""Helpers for testing and benchmarking the attention layer (as flash-linear-attention's ``utils/testing``): LoLA
parameters for a config and a shape, random q / k / v, random states of given sizes, cloning a state, and a
relative-RMS comparison. Used by tests/attention and benchmarks/gpu_bench; nothing in the library calls them.

Random draws are made in the state dtype (float64 for float64, else float32) and rounded to the requested dtype,
so a float16 input is the float32 draw rounded, and the same seed gives the same values on every call site.
"""

from __future__ import annotations

import torch

from .common import LolaParams
from .config import LolaConfig
from .feature_maps import make_feature_map
from .scorers import ScoreContext, make_scorer
from .state import LolaState, state_dtype


def make_params(cfg: LolaConfig, hq: int = 4, hkv: int = 2, d: int = 16, *, dtype: torch.dtype = torch.float32,
                device="cpu", perturb: bool = True, factors: torch.Tensor | None = None) -> LolaParams:
    """LolaParams for ``cfg`` with ``hq`` query heads, ``hkv`` KV heads of size ``d``, feature maps in ``dtype`` on
    ``device``. ``perturb``: move learned hedgehog maps away from their identity init (so the q and k maps differ).
    ``factors``: window-factor logits (Hq,); random normal in the state dtype by default."""
    fq, fk = make_feature_map(cfg.feature_map, hq, d), make_feature_map(cfg.feature_map, hq, d)
    if perturb and cfg.feature_map == "hedgehog":
        fq.layer.data += 0.3 * torch.randn_like(fq.layer)
        fk.layer.data += 0.3 * torch.randn_like(fk.layer)
    if factors is None:
        factors = torch.randn(hq, dtype=state_dtype(dtype), device=device)
    return LolaParams(cfg, fq.to(device=device, dtype=dtype), fk.to(device=device, dtype=dtype), factors,
                      make_scorer(cfg.scorer), hq, hkv, d)


def qkv(L: int, hq: int = 4, hkv: int = 2, b: int = 1, d: int = 16, dtype: torch.dtype = torch.float32,
        device="cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random q (b, hq, L, d) and k, v (b, hkv, L, d), standard normal."""
    gen = state_dtype(dtype)
    return tuple(torch.randn(b, h, L, d, dtype=gen, device=device).to(dtype) for h in (hq, hkv, hkv))


def random_score_context(group: int, *, hs: int = 2, n: int = 7, d: int = 5, f: int = 6, b: int = 1,
                         scale: float = 1.0, seed: int = 0) -> ScoreContext:
    """A float64 ScoreContext for ``hs`` storage heads of ``group`` query heads each: random positive phi(k) (B, Hq, n,
    F), linear state H (scaled by ``scale``) and s > 0, values (scaled by ``scale``) doubling as keys, positions 0."""
    g = torch.Generator().manual_seed(seed)
    hq = hs * group
    phi = torch.rand(b, hq, n, f, generator=g, dtype=torch.float64)
    H = torch.randn(b, hq, f, d, generator=g, dtype=torch.float64) * scale
    s = torch.rand(b, hq, f, generator=g, dtype=torch.float64) + 0.5
    v = torch.randn(b, hs, n, d, generator=g, dtype=torch.float64) * scale
    return ScoreContext(k=v, v=v, pos=torch.zeros(b, hs, n, dtype=torch.long), phi_k=phi, H=H, s=s, acc=None,
                        group=group, eps=1e-9, seed=0)


def random_state(p: LolaParams, b: int, hs: int, ns: int, nw: int, pos: int, dtype: torch.dtype,
                 n_folded: int) -> LolaState:
    """A CPU state after ``pos`` tokens with ``ns`` sparse pairs (random distinct positions before the window), a
    window of the last ``nw`` positions, random K/V and a random positive linear state; ``n_folded`` as given."""
    st = LolaState()
    d, f, hq = p.head_dim, p.feature_dim, p.num_heads
    st.init(b, hs, hq, d, f, dtype, "cpu", False)
    st.sp_k, st.sp_v = torch.randn(b, hs, ns, d).to(dtype), torch.randn(b, hs, ns, d).to(dtype)
    st.sp_pos = torch.sort(torch.randperm(pos - nw)[:ns]).values.view(1, 1, ns).expand(b, hs, ns).contiguous()
    st.win_k, st.win_v = torch.randn(b, hs, nw, d).to(dtype), torch.randn(b, hs, nw, d).to(dtype)
    st.win_pos = torch.arange(pos - nw, pos)
    st.H, st.s = torch.rand(b, hq, f, d) * 4, torch.rand(b, hq, f) * 4 + 1
    st.pos, st.n_folded = pos, n_folded
    return st


def clone_state(st: LolaState) -> LolaState:
    """A deep copy of the tensors of ``st`` (and of its meta dict)."""
    c = LolaState(**{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in vars(st).items()})
    c.meta = dict(st.meta)
    return c


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative RMS error ||actual - expected|| / ||expected||, in float64 (NaN anywhere gives NaN)."""
    a, b = actual.double(), expected.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, what: str = "output") -> None:
    """Fail unless the relative RMS error of ``actual`` against ``expected`` is at most ``rtol`` (NaN fails)."""
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    err = rel_err(actual, expected)
    if not err <= rtol:
        raise AssertionError(f"{what}: relative RMS error {err:.3e} > {rtol:.1e}")
