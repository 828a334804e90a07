"""LoLA attention: sliding window (exact softmax) + sparse global cache (exact softmax) + linear-attention state.

Modules:
  config        LolaConfig, the frozen description of one LoLA setting
  feature_maps  phi(.) for the linear part (hedgehog, hedgehog-identity, elu, relu, taylor)
  scorers       which evicted pairs stay in the sparse cache (sre, random, key_norm, attention, recency, sink, snapkv)
  prompt_end    eviction after a full-attention prefill (evict_at = prompt_end): SDPA, mass, one compression
  state         LolaState (per layer) and cache byte accounting
  common        primitives shared by every path: eviction/merge, block attention, the combine formula
  reference     quadratic, mask-based specification (never calls a fast path)
  chunked       chunked prefill (any block of new tokens)
  hybrid        dense window + linear attention (lambda = 0) for training, and its chunked form
  decode        one-token decode step (``decode_step``: the host bookkeeping shared with the Triton decode)
  static_decode the same step over fixed buffers, position and lengths in device tensors (CUDA-graph capturable)
  kernels/      Triton kernels with the torch paths as fallback: merge, prefill, decode, linear_prefix, _jit, _host
  testing       helpers for tests and benchmarks: params, random inputs and states, relative-RMS assert_close
"""

from .config import LolaConfig  # noqa: F401
