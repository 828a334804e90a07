"""StaticLolaCache: a LolaCache whose layers hold ``StaticLolaState`` (fixed buffers, device-side position and
lengths), so that a whole-model decode step can be captured in a CUDA graph and replayed.

Built from a prefilled LolaCache with ``to_static_cache`` (exact). A patched model's LolaAttention runs only the
static step on such a layer (device work: ``kernels.static_step_triton`` where the kernels run, else the torch
``static_step``; ``LolaAttention.calls`` names which); whoever drives the decode calls ``prepare`` before each step (the
chunk-boundary merge, eager, every ``chunk`` tokens) and ``advance_host`` after it (the host mirrors), and passes the
token's position itself (``position_ids`` from a device buffer): nothing in the step reads a host-side length.
"""

from __future__ import annotations

from transformers.cache_utils import Cache

from ..attention.common import evict_before
from ..attention.static_decode import Evict, StaticLolaState, static_unsupported
from ..errors import UserError
from .cache import LolaCache, LolaCacheLayer
from .patch import lola_modules


class StaticLolaCacheLayer(LolaCacheLayer):
    def __init__(self, state: StaticLolaState):
        super().__init__()
        self.state = state
        self.is_initialized = True

    def get_seq_length(self) -> int:
        return self.state.pos_host

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        # LoLA attention ignores the mask: a fixed size keeps a replayed step's shapes fixed
        return query_length, 0

    def reset(self) -> None:
        raise RuntimeError("a StaticLolaCache is not reset: build a new one from a prefilled LolaCache")


class StaticLolaCache(LolaCache):
    def __init__(self, states: list[StaticLolaState]):
        Cache.__init__(self, layers=[StaticLolaCacheLayer(s) for s in states])

    @property
    def states(self) -> list[StaticLolaState]:
        return [layer.state for layer in self.layers]

    def prepare(self, evict: Evict = evict_before) -> bool:
        """Before a step, every layer: the chunk-boundary merge if the next token needs it (True if it ran)."""
        return any([s.prepare(evict) for s in self.states])

    def advance_host(self, n: int = 1) -> None:
        for s in self.states:
            s.advance_host(n)

    def nbytes(self) -> int:
        """Bytes a decode step reads from the cache (every slot of every layer, masked or not)."""
        return sum(s.nbytes() for s in self.states)

    def nbytes_by_tier(self) -> dict[str, int]:
        """Bytes held per tier, as ``LolaCache.nbytes_by_tier`` counts them: the live pairs of each layer (its
        equal LolaState), not the slots allocated (``nbytes``)."""
        return self.to_cache().nbytes_by_tier()

    def to_cache(self) -> LolaCache:
        """Back to a LolaCache with equal states (fresh tensors)."""
        out = LolaCache(len(self.layers))
        for layer, s in zip(out.layers, self.states):
            layer.state = s.to_state()
        return out


def static_reason(model) -> str | None:
    """Why the patched ``model`` has no static decode (None when it has one)."""
    mods = lola_modules(model)
    if not mods:
        return "the model is not patched with LoLA"
    return static_unsupported(mods[0].params())


def to_static_cache(model, cache: LolaCache, max_len: int | None = None) -> StaticLolaCache:
    """The static copy of a prefilled ``cache`` of the patched ``model`` (every layer's state, exactly).
    ``max_len``: the longest sequence it will hold (caps the slots when lambda or the window exceeds it)."""
    mods = lola_modules(model)
    if len(mods) != len(cache.layers):
        raise UserError(f"the cache has {len(cache.layers)} layers, the model {len(mods)} LoLA layers")
    return StaticLolaCache([StaticLolaState.from_state(cache.state(m.layer_idx), m.params(), max_len)
                            for m in mods])
