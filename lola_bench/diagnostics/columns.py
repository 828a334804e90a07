"""Needle diagnostics as predictions.jsonl columns, and the ``needle_kept`` summary of a (variant, task, ctx) cell.

``NeedleProbe`` wraps one generation (``with probe: greedy_generate(...)``) and turns the captured prefill of every
LoLA layer (``needle.Capture``) into the columns below. Definitions:

* needle tokens: the prompt tokens that overlap an answer string (every occurrence; passkey states its key twice).
* a token is *exact* in a (layer, storage head) when it is in the window or in that head's sparse cache after
  prefill, i.e. when the question's last token is read; otherwise it is folded into the linear state (``dropped``
  under eviction, which keeps none).
* the needle is *exact in a layer* when at least ``KEPT_MIN_HEADS`` (one) of the layer's storage heads holds, for
  every answer, all tokens of at least one of its occurrences exactly: some head can read the whole needle with
  softmax. ``needle_layer_heads`` is, per layer, the share of storage heads that can.
* a sample's needle is *kept* (``needle_kept``) when it is exact in at least ``KEPT_LAYER_SHARE`` (half) of the
  layers. The cell's ``needle_kept`` is the percentage of its samples whose needle is kept.
* leave rank: the token's rank by score (1 = best) among the sparse-cache candidates at the boundary where it left
  the window, replayed (``replay``); ``needle_rank_keep`` is how many of them stayed (rank <= keep: it was kept
  then). Per token, the median and min over all (layer, storage head).
* attention split of the last prompt query, per layer, in the query head that puts the most weight on the needle
  under plain softmax over the whole prompt (``needle_mass_full``, the head that would read the needle with full
  attention): ``needle_mass`` = the share of LoLA's combined weight (``attention.common.mix``: softmax over the
  window and sparse cache plus phi(q)^T s weighted as in the combine) on the exact needle tokens, ``linear_mass`` =
  the share on the linear memory. ``*_min`` / ``*_median`` / ``*_max`` summarise over layers.
"""

from __future__ import annotations

import statistics

from .needle import Capture, LayerNeedle, analyse_layer, needle_token_positions
from .oracle import PinNeedle

KEPT_MIN_HEADS = 1       # a needle is exact in a layer when at least this many storage heads hold all of it
KEPT_LAYER_SHARE = 0.5   # a needle is kept when it is exact in at least this share of the layers (N = 50%)
NEEDLE_KINDS = ("niah", "niah_lmeval", "passkey")   # RULER task kinds with a needle whose value is the answer


def _r(x, nd: int = 4):
    return None if x is None else round(float(x), nd)


def layer_heads(layer: LayerNeedle, positions: list[list[list[int]]]) -> int:
    """How many storage heads of one layer hold the whole needle exactly: for every answer, all tokens of at least
    one of its occurrences are in the window or in that head's sparse cache."""
    col = {p: i for i, p in enumerate(layer.tokens)}
    count = 0
    for held in layer.sparse_by_head:
        def exact(p, held=held):
            return layer.in_window[col[p]] or held[col[p]]
        count += all(any(all(exact(p) for p in occ) for occ in occs) for occs in positions)
    return count


def sample_columns(layers: list[LayerNeedle], positions: list[list[list[int]]], fold: bool = True) -> dict:
    """The predictions.jsonl columns of one sample from its per-layer analyses (see the module doc)."""
    tokens = layers[0].tokens
    gone = "folded" if fold else "dropped"
    where, exact_share = [], []
    for i in range(len(tokens)):
        if layers[0].in_window[i]:
            where.append("window")
            exact_share.append(1.0)
            continue
        sh = [lay.sparse_heads[i] for lay in layers]
        where.append("sparse" if min(sh) == 1.0 else gone if max(sh) == 0.0 else "mixed")
        exact_share.append(statistics.mean(sh))
    heads = [layer_heads(lay, positions) for lay in layers]
    kept_layers = sum(h >= KEPT_MIN_HEADS for h in heads) / len(heads)
    ranks = [lay.ranks for lay in layers]
    rank_med, rank_min, rank_keep, rank_n = [], [], [], []
    for p in tokens:
        got = [r[p] for r in ranks if r is not None and p in r]
        allr = [x for r in got for x in r.rank]
        rank_med.append(statistics.median(allr) if allr else None)
        rank_min.append(min(allr) if allr else None)
        rank_keep.append(got[0].keep if got else None)
        rank_n.append(got[0].candidates if got else None)
    head = [max(range(len(lay.full)), key=lay.full.__getitem__) for lay in layers]
    nm = [lay.needle[h] for lay, h in zip(layers, head)]
    lm = [lay.linear[h] for lay, h in zip(layers, head)]
    fm = [lay.full[h] for lay, h in zip(layers, head)]
    return {
        "needle_tokens": tokens, "needle_where": where, "needle_exact_share": [_r(x, 3) for x in exact_share],
        "needle_layer_heads": [_r(h / len(lay.sparse_by_head), 3) for h, lay in zip(heads, layers)],
        "needle_kept_layers": _r(kept_layers),
        "needle_kept": kept_layers >= KEPT_LAYER_SHARE,
        "needle_rank_median": rank_med, "needle_rank_min": rank_min, "needle_rank_keep": rank_keep,
        "needle_rank_candidates": rank_n,
        "needle_mass": [_r(x) for x in nm], "linear_mass": [_r(x) for x in lm], "needle_mass_full": [_r(x) for x in fm],
        "needle_mass_min": _r(min(nm)), "needle_mass_median": _r(statistics.median(nm)), "needle_mass_max": _r(max(nm)),
        "linear_mass_min": _r(min(lm)), "linear_mass_median": _r(statistics.median(lm)),
        "needle_mass_full_median": _r(statistics.median(fm)),
    }


def needle_kept_share(predictions: list[dict]) -> float | None:
    """Percentage of the samples with diagnostics whose needle is kept (None when no sample has diagnostics)."""
    flags = [p["needle_kept"] for p in predictions if p.get("needle_kept") is not None]
    return 100.0 * sum(flags) / len(flags) if flags else None


class NeedleProbe:
    """``with NeedleProbe(model, tokenizer, sample, kind) as probe: generate(...)``, then ``probe.columns()``.

    Each LoLA layer is analysed as soon as its prefill ran (``needle.Capture``); ``probe.seconds`` is the time that
    took, for the caller to take out of the generation's timings. Does nothing (``columns()`` is {}, ``seconds`` 0)
    when ``enabled`` is off, the model has no LoLA layer, the task kind has no needle (``NEEDLE_KINDS``) or the
    needle cannot be located in the tokens.

    ``pin=True`` (``ruler --pin-needle``, an oracle ablation: ``oracle.PinNeedle``) also keeps the needle tokens in
    every layer's sparse cache during the generation, diagnostics on or off; ``pinned`` says whether it could (the
    needle was found)."""

    def __init__(self, model, tokenizer, sample, kind: str, enabled: bool = True, ranks: bool = True,
                 pin: bool = False):
        from ..models.patch import lola_modules

        self.modules = lola_modules(model) if (enabled or pin) and kind in NEEDLE_KINDS else []
        self.positions = needle_token_positions(sample.prompt, sample.input_ids, sample.answers, tokenizer) \
            if self.modules else None
        self.tokens = sorted({p for occs in self.positions or [] for occ in occs for p in occ})
        self.ranks, self.enabled = ranks, enabled
        self._cap: Capture | None = None
        self._pin = PinNeedle(self.modules, self.tokens) if pin and self.tokens else None

    @property
    def pinned(self) -> bool:
        return self._pin is not None

    @property
    def seconds(self) -> float:
        return self._cap.seconds if self._cap is not None else 0.0

    def __enter__(self):
        if self._pin is not None:
            self._pin.__enter__()
        if self.positions and self.enabled:
            self._cap = Capture(self.modules, lambda c: analyse_layer(c, self.tokens, ranks=self.ranks))
            self._cap.__enter__()
        return self

    def __exit__(self, *exc):
        if self._cap is not None:
            self._cap.__exit__(*exc)
        if self._pin is not None:
            self._pin.__exit__(*exc)
        return False

    def columns(self) -> dict:
        if self._cap is None or not self._cap.layers:
            return {}
        layers = [self._cap.layers[i] for i in sorted(self._cap.layers)]
        return sample_columns(layers, self.positions, fold=self.modules[0].cfg.fold)
