"""Needle diagnostics for RULER / passkey runs with LoLA: where the needle is when the question is read.

Modules:
  needle   needle token positions, capture of each LoLA layer's prefill (forward hooks), per-layer analysis
           (window / sparse cache / folded, and the last query's attention split: needle, window, sparse, linear)
  replay   the chunk-boundary selection replayed from a layer's keys and values: each token's rank when it left
           the window
  columns  the predictions.jsonl columns, the ``needle_kept`` cell summary, and ``NeedleProbe`` (one generation)
"""

from .columns import KEPT_LAYER_SHARE, KEPT_MIN_HEADS, NEEDLE_KINDS, NeedleProbe, needle_kept_share  # noqa: F401
