"""One look per variant family, the same in every sweep plot: LoLA in blues (filled circles, its λ = 0 base
hollow), each KV-eviction baseline its own warm colour and marker (filled when it evicts at chunk boundaries while
the prompt is read, hollow and hatched when it compresses once after a full prefill, the published protocol), full
attention a black star. Colour then tells the family at a glance and the marker the baseline, also in greyscale."""

from __future__ import annotations

from dataclasses import dataclass

from .labels import is_prompt_end

LOLA_COLORS = ("tab:blue", "navy", "tab:cyan", "steelblue", "darkslateblue")
EVICT_COLORS = {"sink": "tab:orange", "attention": "tab:red", "snapkv": "tab:purple", "key_norm": "tab:brown",
                "random": "tab:gray", "recency": "tab:olive"}
EVICT_MARKERS = {"sink": "s", "attention": "^", "snapkv": "v", "key_norm": "D", "random": "P", "recency": "X"}


@dataclass(frozen=True)
class Look:
    color: str
    marker: str
    filled: bool
    hatch: str | None = None

    def scatter_kw(self) -> dict:
        return {"marker": self.marker, "edgecolors": self.color, "linewidths": 1.5,
                "facecolors": self.color if self.filled else "none"}

    def bar_kw(self) -> dict:
        return {"color": self.color if self.filled else "white", "edgecolor": self.color, "hatch": self.hatch,
                "linewidth": 1.2}


def family_look(attn, scorer=None, lam=None, evict_at=None, lola_index: int = 0) -> Look:
    """The look of a row's family; ``lola_index``: which LoLA scorer / feature map style, when a plot has several."""
    if attn == "full":
        return Look("black", "*", True)
    if attn == "evict":
        key = "sink" if lam == 0 else scorer
        after = is_prompt_end(evict_at)
        return Look(EVICT_COLORS.get(key, "tab:pink"), EVICT_MARKERS.get(key, "h"), not after,
                    "////" if after else None)
    if attn == "base" or lam == 0:
        return Look(LOLA_COLORS[0], "o", False)
    return Look(LOLA_COLORS[lola_index % len(LOLA_COLORS)], "o", True)
