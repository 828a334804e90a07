"""Host-side utilities shared by the kernel wrappers (merge.py, prefill.py, decode.py): codes and schedule layout
the kernels read, allocation, contiguity, the learned feature-map weights, and the readers of the kernel-tuning
environment variables ($LOLA_TRITON_FP32_DOT, $LOLA_TRITON_DEBUG_FILL, $LOLA_MERGE_TILES, $LOLA_MERGE_SELECT,
$LOLA_MERGE;
``kernels.kernel_env`` reports the ones in force). Nothing here launches a kernel.
"""

from __future__ import annotations

import os

import torch
import triton

from ..common import LolaParams
from ..state import LolaState

# One int32 schedule row per chunk step (see prefill.build_schedule): ns_before, leave_lo, n_leave, keep, q0, seg,
# w_lo, w_hi, has_lin. The kernels read the fields at these offsets.
SCHED_FIELDS = 9

PHI_CODES = {"hedgehog": 0, "hedgehog-identity": 0, "elu": 1, "relu": 2}
COMBINE_CODES = {"gated": 0, "lolcats": 1, "normalized": 2, "calibrated": 3, "lola": 4}


def fp32_dot_precision(dtype: torch.dtype) -> str:
    """tl.dot precision for fp32 operands (phi @ H, phi^T @ v): $LOLA_TRITON_FP32_DOT, else ieee for float32
    models and tf32 for 16-bit models (16-bit values are exact in tf32; only H is rounded to 10 mantissa bits)."""
    env = os.environ.get("LOLA_TRITON_FP32_DOT")
    if env in ("ieee", "tf32", "tf32x3"):
        return env
    return "ieee" if dtype == torch.float32 else "tf32"


def alloc(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """torch.empty, or filled with NaN / -1 when $LOLA_TRITON_DEBUG_FILL=1 so that unwritten elements show up."""
    if os.environ.get("LOLA_TRITON_DEBUG_FILL") == "1":
        return torch.full(shape, float("nan") if dtype.is_floating_point else -1, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def rounded_eps(eps: float, dtype: torch.dtype) -> float:
    """The feature-map clamp as torch applies it to a tensor of ``dtype`` (1e-12 is 0 in float16)."""
    return float(torch.tensor(eps, dtype=dtype).float())


def feature_eps(params: LolaParams) -> float:
    return float(getattr(params.feature_map_k, "eps", 0.0))


def _kernel_weight(fm, dtype: torch.dtype, device) -> torch.Tensor:
    """fm.layer as a contiguous tensor of ``dtype`` on ``device``, converted once and kept on the feature map
    until the weight changes (in place, or by moving the module): decode would otherwise copy it every token
    when the checkpoint's weights are float32 and the model runs in 16 bits."""
    w = fm.layer
    key = (dtype, str(device), w._version, w.data_ptr())
    cached = getattr(fm, "_kernel_weight", None)
    if cached is None or cached[0] != key:
        cached = (key, w.detach().to(device=device, dtype=dtype).contiguous())
        fm._kernel_weight = cached
    return cached[1]


def learned_weights(params: LolaParams, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_k, W_q) as (Hq, D, D) in the model dtype for hedgehog; 1-element dummies otherwise."""
    if params.cfg.feature_map == "hedgehog":
        return _kernel_weight(params.feature_map_k, dtype, device), _kernel_weight(params.feature_map_q, dtype, device)
    dummy = torch.zeros(1, dtype=dtype, device=device)
    return dummy, dummy


TILE_KEYS = ("BLOCK_N", "BLOCK_R", "BLOCK_C", "BLOCK_DV", "num_warps")


def block_sizes(d: int, dtype: torch.dtype, learned: bool = False) -> dict:
    """Tiles and warps of the merge kernel (float32 models use ieee fp32 dots, and learned hedgehog keeps W tiles
    live: both need more registers, so smaller tiles). The 16-bit tiles do not spill for sm_90 with Triton 3.6 or
    3.9 (``gpu_bench.py --compile-check``; learned hedgehog at 64-row tiles spilled 8 bytes).
    ``$LOLA_MERGE_TILES`` ("BLOCK_N=32,num_warps=4", powers of two) overrides any of them: gpu_bench's tile sweep
    uses it to time alternatives on a GPU."""
    big = d <= 64 and dtype != torch.float32 and not learned
    tiles = dict(BLOCK_N=64 if big else 32, BLOCK_R=32, BLOCK_C=128, BLOCK_DV=min(d, 32), num_warps=8)
    spec = os.environ.get("LOLA_MERGE_TILES", "").strip()
    for item in filter(None, (x.strip() for x in spec.split(","))):
        key, _, val = (x.strip() for x in item.partition("="))
        if key not in TILE_KEYS or not val.isdigit() or int(val) < 1 or int(val) & (int(val) - 1):
            raise ValueError(f"LOLA_MERGE_TILES: {item!r} is not KEY=power-of-two with KEY in {', '.join(TILE_KEYS)}")
        tiles[key] = int(val)
    if not (16 <= tiles["BLOCK_DV"] <= d and tiles["BLOCK_N"] >= 16 and tiles["num_warps"] <= 32):
        raise ValueError(f"LOLA_MERGE_TILES: need 16 <= BLOCK_DV <= head_dim ({d}), BLOCK_N >= 16 (tl.dot) and "
                         f"num_warps <= 32, got {tiles}")
    return tiles


SELECT_MAX_NPAD = 2048  # register-resident selection up to this many (padded) candidates; rank counting beyond


def select_mode(cand_cap: int) -> tuple[int, int]:
    """(SELECT, NPAD) for the merge kernel: 1 = selection in registers by threshold bisection (the default while the
    candidates fit SELECT_MAX_NPAD), 0 = rank counting over global scratch (O(n^2) compares in serial tiles; the
    selection the kernel had before). ``$LOLA_MERGE_SELECT=rank|threshold`` forces one (``threshold`` still falls
    back to rank counting above the register limit). Both select exactly the same pairs."""
    npad = triton.next_power_of_2(max(cand_cap, 16))
    want = os.environ.get("LOLA_MERGE_SELECT", "threshold")
    if want not in ("rank", "threshold"):
        raise ValueError(f"LOLA_MERGE_SELECT must be 'rank' or 'threshold', got {want!r}")
    return (1, npad) if want == "threshold" and npad <= SELECT_MAX_NPAD else (0, 16)


MERGE_MODES = ("persistent", "stepwise", "stepwise-eager")


def merge_mode() -> str:
    """Which chunk-boundary merge runs: ``$LOLA_MERGE``, default ``persistent`` (merge.py: one program per batch x
    storage head walks every step) or ``stepwise`` (merge_steps.py: a few wide launches per step, replayed as a CUDA
    graph on a GPU; ``stepwise-eager`` never captures a graph). The default stays persistent until a GPU run has
    timed the stepwise merge (benchmarks/gpu_bench, section merge_step)."""
    mode = os.environ.get("LOLA_MERGE", "persistent")
    if mode not in MERGE_MODES:
        raise ValueError(f"LOLA_MERGE must be one of {', '.join(MERGE_MODES)}, got {mode!r}")
    return mode


def merge_label() -> str:
    """What the implementation name of a Triton layer call gains for the merge that ran: nothing for the persistent
    merge (the only one before ``$LOLA_MERGE`` existed, so older rows named ``triton`` mean the same), else e.g.
    `` (stepwise merge)``; the selection when ``$LOLA_MERGE_SELECT=rank`` forces rank counting (the default
    selects in registers where the candidates fit, the same pairs either way, at another speed)."""
    labels = {"persistent": [], "stepwise": ["stepwise merge"], "stepwise-eager": ["stepwise merge, eager"]}
    parts = labels[merge_mode()] + (["rank-count selection"] if os.environ.get("LOLA_MERGE_SELECT") == "rank" else [])
    return f" ({', '.join(parts)})" if parts else ""


def ensure_contiguous_state(state: LolaState) -> None:
    """The kernels address H and s as dense (B, Hq, F, D) / (B, Hq, F) tensors."""
    if not state.H.is_contiguous():
        state.H = state.H.contiguous()
    if not state.s.is_contiguous():
        state.s = state.s.contiguous()
