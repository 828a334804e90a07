"""How a run's variant is named in the side-by-side reports: `full`, or `<attn> (η=…, λ=…, <details>)`."""

from __future__ import annotations


def run_variant_label(row, details: list[str]) -> str:
    """``row``: a summary row (attn, window, lambda, ...); ``details``: extra words for the parenthesis."""
    if row["attn"] == "full":
        return "full"
    parts = [f"η={int(row['window'])}", f"λ={int(row['lambda'])}", *details]
    return f"{row['attn']} ({', '.join(parts)})"
