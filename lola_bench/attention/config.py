"""LolaConfig: one LoLA setting, frozen so it can be hashed and serialized into every result file.

What "window eta" covers exactly (paper cadence, chunk = eta):
  Tokens are processed in chunks of ``chunk`` tokens aligned to absolute positions (chunk c holds
  positions [c*chunk, (c+1)*chunk)). A query at position t in chunk c sees, with exact softmax:
    * the local window: every key j with  max(0, c*chunk - window) <= j <= t
      (with chunk = window this is the previous chunk plus the causal part of the current one,
      i.e. between window+1 and 2*window keys once t >= window), and
    * the sparse cache: at most ``sparse`` (lambda) older pairs,
    * the attention sinks: the first ``sinks`` positions of the sequence, pinned in the sparse cache on top
      of its ``sparse`` scored entries (never folded; 0 = none),
  and through the linear state (H, s) every other older key.
  When a new chunk starts, keys that fall out of the window (positions below c*chunk - window) are
  scored together with the cached pairs (re-scored against the current state); the ``sparse``
  best stay, the rest are folded into H, s for good. Decode runs the same update whenever a token
  starts a new chunk, so prefill-then-decode equals one long prefill.
  chunk = 1 gives a token-level sliding window of exactly ``window`` past tokens.
With ``fold=False`` (KV eviction, ``--attn evict``) the same boundary update drops the non-kept pairs instead of
folding them: there is no linear state (no feature map, no H, s, no linear readout), and every query is plain
softmax over exactly the sparse cache, the sinks and its window. StreamingLLM = scorer sink with sinks and
sparse 0. SRE needs a linear state and is refused.

When eviction chooses (``evict_at``, eviction only; ``--evict-at``):
  boundary    (default) at every chunk boundary, from the start of the prompt on, with LoLA's cadence: the scorer sees
              only the prompt read so far, and the prompt itself is read with window + sparse cache (peak memory =
              the compressed cache). Scorer attention = "H2O-style", snapkv = "SnapKV-style".
  prompt_end  the published methods' protocol (SnapKV; H2O as kvpress runs it): the first call (the prompt, state
              empty) is exact causal softmax attention over all of its keys, so its last token (which picks the
              first generated token) sees the whole prompt; then the cache is compressed once: every position below
              ``window_start`` of the chunk holding the next position is a candidate, ``keep`` of them stay (sinks
              pinned), chosen with full-attention information (attention: the mass every prompt query paid each key
              = H2O; snapkv: the mass of the prompt's last ``window`` queries, average-pooled = SnapKV). That is the
              only eviction (SnapKV's code and kvpress decode with a growing cache): every later token (decode
              steps, later calls) is kept exactly, in a window that no longer slides (it holds every position from
              the compression's window start on), and every later query attends with softmax to the kept prompt
              pairs plus every key from that window start up to itself. Peak memory is the full KV cache of the
              prompt during the prefill; the cache held afterwards is the compressed prompt (window + kept pairs),
              growing by one pair per later token (no attention mass is held after the compression).
``to_dict`` leaves ``evict_at`` out at its default, so configurations hashed before it existed keep their ids.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import UserError

FEATURE_MAPS = ("hedgehog", "hedgehog-identity", "elu", "relu", "taylor")
SCORERS = ("sre", "sre_relative", "random", "key_norm", "attention", "recency", "sink", "snapkv")
STATE_SCORERS = ("sre", "sre_relative")   # score against the linear state: LoLA only, never eviction
COMBINES = ("lola", "calibrated", "lolcats", "gated", "normalized")
GQA_MODES = ("grouped", "expanded")
EVICT_AT = ("boundary", "prompt_end")


@dataclass(frozen=True)
class LolaConfig:
    window: int = 64                 # eta: local sliding window (exact softmax)
    sparse: int = 512                # lambda: sparse global cache size (exact softmax)
    chunk: int | None = None         # update cadence; None = window (the public code's cadence)
    feature_map: str = "hedgehog-identity"
    scorer: str = "sre"
    combine: str = "lola"            # lola (the authors'), calibrated, lolcats, gated, normalized (common.mix)
    gqa: str = "expanded"            # expanded: per query head (the authors'); grouped: once per KV head
    sinks: int = 0                   # first positions always kept exact (on top of lambda); ckpts record theirs
    factor_init: float = 3.0         # window factor logit (softmax weight sigmoid(factor)) when no checkpoint
    eps: float = 1e-6                # denominator epsilon
    seed: int = 0                    # for the random scorer
    fold: bool = True                # False: pairs that leave are dropped, not folded (KV eviction, --attn evict)
    evict_at: str = "boundary"       # eviction only: boundary (every chunk) or prompt_end (full prefill, then once)

    def __post_init__(self):
        if not isinstance(self.window, int) or self.window <= 0:
            raise UserError(f"window (eta) must be a positive integer, got {self.window!r}")
        if not isinstance(self.sparse, int) or self.sparse < 0:
            raise UserError(f"sparse cache size (lambda) must be >= 0, got {self.sparse!r}")
        if self.chunk is not None and (not isinstance(self.chunk, int) or self.chunk <= 0):
            raise UserError(f"chunk must be a positive integer or None, got {self.chunk!r}")
        if self.feature_map not in FEATURE_MAPS:
            raise UserError(f"unknown feature map {self.feature_map!r}: choose one of {', '.join(FEATURE_MAPS)}")
        if self.scorer not in SCORERS:
            raise UserError(f"unknown scorer {self.scorer!r}: choose one of {', '.join(SCORERS)}")
        if self.combine not in COMBINES:
            raise UserError(f"unknown combine formula {self.combine!r}: choose one of {', '.join(COMBINES)}")
        if self.gqa not in GQA_MODES:
            raise UserError(f"unknown GQA mode {self.gqa!r}: choose one of {', '.join(GQA_MODES)}")
        if not isinstance(self.sinks, int) or self.sinks < 0:
            raise UserError(f"sinks must be an integer >= 0, got {self.sinks!r}")
        if not isinstance(self.fold, bool):
            raise UserError(f"fold must be True or False, got {self.fold!r}")
        if not self.fold and self.scorer in STATE_SCORERS:
            raise UserError(f"scorer {self.scorer!r} (self-recall error against the linear state) is meaningless for "
                            "eviction, "
                            "which has no linear state: choose random, key_norm, attention, recency, sink or snapkv")
        if self.evict_at not in EVICT_AT:
            raise UserError(f"unknown evict_at {self.evict_at!r}: choose one of {', '.join(EVICT_AT)}")
        if self.fold and self.evict_at != "boundary":
            raise UserError(f"evict_at {self.evict_at!r} applies to KV eviction (--attn evict) only: LoLA and its "
                            "base fold what leaves the window at every chunk boundary")
        if self.eps <= 0:
            raise UserError(f"eps must be > 0, got {self.eps!r}")

    @property
    def chunk_size(self) -> int:
        return self.chunk if self.chunk is not None else self.window

    def window_start(self, chunk_index: int) -> int:
        """First key position inside the local window for queries of chunk ``chunk_index``."""
        return max(0, chunk_index * self.chunk_size - self.window)

    def keep(self, window_start: int, n: int) -> int:
        """How many of ``n`` candidates stay in the sparse cache at the chunk boundary whose window starts at
        ``window_start``: ``sparse`` scored pairs plus the pinned sinks that have left the window (every position
        below ``window_start`` has), never more than there are candidates. Every path uses this rule."""
        return min(self.sparse + min(self.sinks, window_start), n)

    @property
    def exact_len(self) -> int:
        """The longest sequence (prompt + generated) for which nothing is folded into the linear state, so LoLA
        is exactly softmax attention: the first fold happens in the first chunk c with window_start(c) > sparse
        + sinks. With chunk = window that is sparse + sinks + 2*window tokens (rounded up to a whole chunk)."""
        c = (self.sparse + self.sinks + self.window) // self.chunk_size + 1
        return c * self.chunk_size

    def to_dict(self) -> dict:
        d = {**asdict(self), "chunk_size": self.chunk_size}
        if self.evict_at == "boundary":  # the default: absent, so configs hashed before evict_at keep their ids
            del d["evict_at"]
        return d
