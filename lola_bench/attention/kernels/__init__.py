"""Triton kernels for LoLA attention, with the torch paths as fallback.

  lola_decode_triton(q, k, v, state, params)   same contract as ``decode.lola_decode``
  lola_chunked_triton(q, k, v, state, params)  same contract as ``chunked.lola_chunked``
  static_step_triton(q, k, v, static_state)    same contract as ``static_decode.static_step`` (capturable)

Kernels (see each module):
  decode.py   one-token attention: sparse + window split-K softmax, linear readout, combine (two launches);
              ``static_decode_attention``: the same launches over a static state, lengths read on the device
  merge.py    chunk-boundary merge for every scorer: SRE (or precomputed) scoring, top-lambda selection, fold
              into (H, s); ``evict_before_triton`` is its one-step wrapper for decode
  merge_steps.py  the same merge spread over many programs, a few launches per chunk step (CUDA graph on a GPU);
              ``$LOLA_MERGE=stepwise`` selects it (default ``persistent``: merge.py), ``merge_name`` says which ran
  prefill.py  chunked prefill: the merge kernel walks every chunk in-kernel, then one attention launch
  linear_prefix.py  phase A of the prefill without scoring (sparse = 0): step-parallel fold in torch
  _jit.py     @triton.jit helpers shared by the kernels (feature maps, the selection's order key)
  _host.py    host utilities shared by the wrappers (codes, allocation, weights, the tuning env-var readers)

Supported: feature maps hedgehog, hedgehog-identity, elu, relu; scorers sre, random, key_norm, recency,
sink; pinned attention sinks (``sinks`` > 0); every combine; grouped and expanded GQA; float32, float16,
bfloat16 inputs; any window / chunk / sparse sizes; head_dim a power of two >= 16. Everything else runs the
torch path unchanged: eviction (``fold`` off), the taylor feature map (F = 1 + d + d^2), the attention and
snapkv scorers (need attention mass from every call), float64, other head sizes, and tensors the kernels cannot
reach (CPU tensors without TRITON_INTERPRET=1). With sparse = 0 the prefill skips the merge kernel (linear_prefix.py).
``unsupported_reason`` says which case applies.

No wrapper synchronizes with the device (sizes come from host-side bookkeeping), so decode steps and
prefills queue asynchronously. ``static_step_triton`` (a ``StaticLolaState``: fixed buffers, the position and
lengths in device tensors) launches the same grid at every position, so a whole decode step can be captured in a
CUDA graph and replayed; ``decode.decode_attention`` takes the lengths as launch arguments (a captured launch holds
for one position). Tests run the kernels on CPU under TRITON_INTERPRET=1 (tests/attention/test_kernels.py);
``scripts/gpu_bench.py --compile-check`` compiles them for sm_90 without a GPU.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from ..chunked import lola_chunked
from ..common import LolaParams
from ..decode import decode_step, lola_decode
from ..state import LolaState
from ..static_decode import StaticLolaState, static_step

KERNEL_FEATURE_MAPS = ("hedgehog", "hedgehog-identity", "elu", "relu")
KERNEL_SCORERS = ("sre", "random", "key_norm", "recency", "sink")


# Every environment variable the attention layer reads (tests/attention/test_kernels.py checks the list against the
# source): Triton's interpreter switch, the kernel-tuning overrides read at launch time by _host.py, and the CPU
# prefill's pipeline switch (pipeline.py).
KERNEL_ENV_VARS = ("TRITON_INTERPRET", "LOLA_TRITON_FP32_DOT", "LOLA_TRITON_DEBUG_FILL", "LOLA_MERGE_TILES",
                   "LOLA_MERGE_SELECT", "LOLA_MERGE", "LOLA_CPU_PIPELINE", "LOLA_CPU_FUSED")


def kernel_env() -> dict[str, str]:
    """The kernel environment overrides in force now ({name: value} for each of KERNEL_ENV_VARS that is set), so a
    caller can record in its results what the kernels ran with. Reading them stays where it was (at launch)."""
    return {name: os.environ[name] for name in KERNEL_ENV_VARS if name in os.environ}


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=None)
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


@functools.lru_cache(maxsize=None)
def _cuda_backend() -> bool:
    """Triton's active driver targets CUDA (probed once per process: it does not change)."""
    try:
        from triton.runtime import driver

        return driver.active.get_current_target().backend == "cuda"
    except Exception:  # noqa: BLE001 - any driver problem means "no kernels"
        return False


def kernels_available() -> bool:
    """True when Triton kernels can run here: a CUDA device with Triton's driver, or TRITON_INTERPRET=1 (CPU).
    Called on every layer call, so the package and driver probes are cached; the environment is read each time."""
    if not _triton_installed():
        return False
    if interpreting():
        return True
    return torch.cuda.is_available() and _cuda_backend()


def unsupported_reason(q: torch.Tensor, params: LolaParams) -> str | None:
    """Why the kernels cannot run this call (None when they can)."""
    cfg = params.cfg
    d = params.head_dim
    if not cfg.fold:
        return "eviction has no kernel"
    if cfg.feature_map not in KERNEL_FEATURE_MAPS:
        return f"feature map {cfg.feature_map!r} has no kernel"
    if cfg.scorer not in KERNEL_SCORERS:
        return f"scorer {cfg.scorer!r} has no kernel"
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"dtype {q.dtype} has no kernel"
    if d < 16 or d & (d - 1):
        return f"head_dim {d} is not a power of two >= 16"
    layer = getattr(params.feature_map_k, "layer", None)
    if cfg.feature_map == "hedgehog" and layer is not None and layer.shape[-1] != d:
        return f"hedgehog projection ({d}, {layer.shape[-1]}) is not square (the kernels take (H, d, d))"
    if not kernels_available():
        return "Triton kernels are not available on this machine"
    if q.device.type != "cuda" and not interpreting():
        return f"tensors on {q.device.type} need CUDA (or TRITON_INTERPRET=1)"
    return None


def lola_chunked_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LolaState,
                        params: LolaParams) -> torch.Tensor:
    """Chunked prefill with Triton (merge kernel over all chunks + one attention launch); falls back to
    ``lola_chunked`` for the configurations listed in the module docstring."""
    if q.shape[2] == 0 or unsupported_reason(q, params):
        return lola_chunked(q, k, v, state, params)
    from .prefill import prefill

    return prefill(q, k, v, state, params)


def lola_decode_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: LolaState,
                       params: LolaParams) -> torch.Tensor:
    """One-token decode with Triton: ``decode.decode_step``'s bookkeeping with the chunk-boundary merge kernel (when
    the token starts a chunk) and the fused decode kernel; falls back to ``lola_decode`` for unsupported
    configurations."""
    if unsupported_reason(q, params):
        return lola_decode(q, k, v, state, params)  # raises for more than one token, like decode_step
    from ._host import ensure_contiguous_state
    from .decode import decode_attention
    from .merge import evict_before_triton

    def evict(st: LolaState, pr: LolaParams, window_start: int) -> None:
        ensure_contiguous_state(st)  # the decode kernel reads H and s as dense tensors, merge or not
        evict_before_triton(st, pr, window_start)

    return decode_step(q, k, v, state, params, evict, lambda q1, st, pr, _pos: decode_attention(q1, st, pr))


def static_step_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, st: StaticLolaState) -> torch.Tensor:
    """``static_step`` with the attention in the Triton decode kernels (``decode.static_decode_attention``: a fixed
    grid, lengths and "anything folded" read from the state's device tensors), so the step stays capturable; the
    new pair is still written by torch's ``index_copy_`` at a device-side slot. Falls back to the torch
    ``static_step`` where ``unsupported_reason`` says the kernels cannot run."""
    if unsupported_reason(q, st.params):
        return static_step(q, k, v, st)
    from .decode import static_decode_attention

    return static_step(q, k, v, st, static_decode_attention)


def merge_name() -> str:
    """The suffix of the implementation name for the chunk-boundary merge in force (``$LOLA_MERGE``): "" for the
    persistent kernel (older rows named ``triton`` ran it too), " (stepwise merge)" or " (stepwise merge, eager)"."""
    from ._host import merge_label

    return merge_label()


__all__ = ["kernel_env", "kernels_available", "lola_chunked_triton", "lola_decode_triton", "merge_name",
           "static_step_triton", "unsupported_reason"]
