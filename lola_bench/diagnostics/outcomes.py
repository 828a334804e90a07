"""The needle diagnostics summarised by outcome: for each (variant, task, ctx), the samples answered and the samples
missed side by side, so that a run says whether its misses lost the needle in the selection or in the readout.

Per sample (columns of ``columns.sample_columns``):
* ``exact_share``: the mean over needle tokens of ``needle_exact_share`` (share of (layer, head) pairs holding it);
* ``kept_layers``: ``needle_kept_layers`` (share of layers where some head holds the whole needle);
* the *retrieval layer*: the layer whose last prompt query puts the most weight on the needle under full softmax
  (``argmax needle_mass_full``); in it ``needle_share_full`` (that weight under full attention),
  ``needle_share`` (the share of LoLA's combined weight on the exact needle tokens there) and ``linear_share`` (on
  the linear memory there). Under full attention the needle is read in a few middle layers; comparing LoLA's share
  with full attention's in the same layer separates a needle that is gone (selection) from one that is held but
  outweighed (readout).
The table gives the median of each over the samples of a group, with n.
"""

from __future__ import annotations

import statistics

import pandas as pd

KEYS = ["attn", "scorer", "task", "ctx", "outcome"]
COLUMNS = [*KEYS, "n", "exact_share", "kept_layers", "needle_mass_max", "linear_mass_median", "retrieval_layer",
           "needle_share_full", "needle_share", "linear_share"]
NOTE = ("Medians over the samples of each group (outcome: `answered` = score 100, else `missed`). `exact_share`: share "
        "of (layer, head) pairs holding a needle token exactly when the question is read; `kept_layers`: share of "
        "layers where some head holds the whole needle; retrieval layer: the layer whose last prompt query weighs "
        "the needle most under plain softmax over the whole prompt; there `needle_share_full` (that softmax weight: "
        "what full attention would give the same query), `needle_share` (LoLA's combined weight on the exact needle) "
        "and `linear_share` (LoLA's weight on the linear memory). Made by "
        "`lola_bench.diagnostics.outcomes` from predictions.jsonl.")


def _sample(p: dict) -> dict | None:
    full, lola, lin = p.get("needle_mass_full"), p.get("needle_mass"), p.get("linear_mass")
    share = p.get("needle_exact_share")
    if not full or not lola or not lin or not share:
        return None
    layer = max(range(len(full)), key=full.__getitem__)
    return {"exact_share": statistics.mean(share), "kept_layers": p.get("needle_kept_layers"),
            "needle_mass_max": p.get("needle_mass_max"), "linear_mass_median": p.get("linear_mass_median"),
            "retrieval_layer": layer, "needle_share_full": full[layer], "needle_share": lola[layer],
            "linear_share": lin[layer]}


def needle_outcomes(predictions: list[dict]) -> pd.DataFrame:
    """One row per (attn, scorer, task, ctx, outcome) with diagnostics: n and the medians described in the module
    doc. Empty (with the columns) when no prediction has diagnostics."""
    groups: dict[tuple, list[dict]] = {}
    for p in predictions:
        s = _sample(p)
        if s is None:
            continue
        key = (p.get("attn"), p.get("scorer"), p.get("task"), int(p.get("ctx")),
               "answered" if float(p.get("score", 0)) >= 100 else "missed")
        groups.setdefault(key, []).append(s)
    rows = []
    for key, samples in groups.items():
        row = dict(zip(KEYS, key), n=len(samples))
        for c in COLUMNS[len(KEYS) + 1:]:
            vals = [s[c] for s in samples if s[c] is not None]
            row[c] = statistics.median(vals) if vals else None
        rows.append(row)
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(["task", "ctx", "attn", "scorer", "outcome"], kind="stable").reset_index(drop=True)
