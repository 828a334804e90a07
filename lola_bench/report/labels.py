"""How variants are named in the reports: `full`, `<attn> (η=…, λ=…, <details>)` for the side-by-side reports, and
the baseline name of a KV-eviction variant (``eviction_name``), shared with the sweep report.

Eviction is named by its scorer and by when it chooses (``evict_at``, the rows' ``evict_at`` column; rows written
before it existed are boundary rows). At every chunk boundary while the prompt is read (boundary) the attention-mass
scorers only resemble the published methods: "H2O-style", "SnapKV-style". After a full-attention prefill
(prompt_end) they are the published protocol: "H2O", "SnapKV"; the other scorers get "after prefill" appended.
"""

from __future__ import annotations

FULL_LABEL = "full attention"
BASE_LABEL = "LoLA base (λ=0)"

# KV eviction (--attn evict) at every chunk boundary, by scorer: the baseline each one is known as
EVICTION_NAMES = {"sink": "StreamingLLM", "attention": "H2O-style", "snapkv": "SnapKV-style", "key_norm": "key-norm",
                  "random": "random", "recency": "recency"}
# ... and after a full-attention prefill (--evict-at prompt_end): the published methods
PROMPT_END_NAMES = {"attention": "H2O", "snapkv": "SnapKV"}


def is_prompt_end(evict_at) -> bool:
    return evict_at == "prompt_end"     # None / NaN (rows without the column) / boundary: boundary


def eviction_name(scorer, lam=None, evict_at=None) -> str:
    """StreamingLLM (λ=0 or the sink scorer: sinks + window), H2O(-style), SnapKV(-style), key-norm, random,
    recency; prompt_end names the published methods, and the others "<name> after prefill"."""
    boundary = "StreamingLLM" if lam == 0 else EVICTION_NAMES.get(scorer, str(scorer))
    if not is_prompt_end(evict_at):
        return boundary
    return boundary + " after prefill" if lam == 0 else PROMPT_END_NAMES.get(scorer, boundary + " after prefill")


def family_label(attn, scorer=None, lam=None, evict_at=None) -> str:
    """The variant family a reader can tell apart: full attention, LoLA base (λ=0), LoLA, or eviction with the
    baseline its scorer and ``evict_at`` make (``labels.eviction_name``: StreamingLLM = sinks + window, λ=0 or
    sink-scored; H2O-style / SnapKV-style at chunk boundaries, H2O / SnapKV after a full prefill; key-norm; random)."""
    if attn == "full":
        return FULL_LABEL
    if attn == "evict":
        return f"eviction: {eviction_name(scorer, lam, evict_at)}"
    if attn == "base" or lam == 0:
        return BASE_LABEL
    return "LoLA"


def run_variant_label(row, details: list[str]) -> str:
    """``row``: a summary row (attn, window, lambda, ...); ``details``: extra words for the parenthesis (eviction
    rows get their baseline name first)."""
    if row["attn"] == "full":
        return "full"
    if row["attn"] == "evict" and isinstance(row.get("scorer"), str):
        details = [eviction_name(row["scorer"], row["lambda"], row.get("evict_at")), *details]
    parts = [f"η={int(row['window'])}", f"λ={int(row['lambda'])}", *details]
    return f"{row['attn']} ({', '.join(parts)})"


SUMMARY_DETAILS = ("scorer", "feature_map", "sinks", "gqa", "combine", "evict_at")


def summary_variant_names(df) -> list[str]:
    """A name per row of a run's summary (one variant × task × context each) that tells the families apart: the
    family (``family_label``) with η and λ, plus any of ``SUMMARY_DETAILS`` that differ between the run's rows of
    that family (e.g. two LoLA scorers), so that no two variants of one run share a name."""
    names = []
    fam = [family_label(r["attn"], r.get("scorer"), r.get("lambda"), r.get("evict_at")) for _, r in df.iterrows()]
    for (_, r), f in zip(df.iterrows(), fam):
        if r["attn"] == "full":
            names.append(f)
            continue
        same = df[[g == f for g in fam]]
        varying = [c for c in SUMMARY_DETAILS if c in df.columns and same[c].astype(str).nunique() > 1]
        parts = [f"η={int(r['window'])}", f"λ={int(r['lambda'])}", *(f"{c}={r[c]}" for c in varying)]
        names.append(f"{f} ({', '.join(parts)})")
    return names
