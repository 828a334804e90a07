"""LolaCache: a transformers Cache whose layers hold LoLA states instead of growing K/V tensors.

``generate()`` only needs the cache to report how many tokens it has seen (for positions and masks);
the attention itself lives in lola_bench.attention and reads/writes ``cache.state(layer_idx)``.
"""

from __future__ import annotations

from transformers.cache_utils import Cache, CacheLayerMixin

from ..attention.state import LolaState


class LolaCacheLayer(CacheLayerMixin):
    is_compileable = False
    is_sliding = False
    is_croppable = False

    def __init__(self):
        super().__init__()
        self.state = LolaState()

    def lazy_initialization(self, key_states, value_states) -> None:  # states are created on first use
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        raise RuntimeError("LolaCache layers are updated by LoLA attention, not through Cache.update(); "
                           "is the model patched with lola_bench.models.patch.patch_model()?")

    def get_seq_length(self) -> int:
        return self.state.pos

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.state.pos + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.state = LolaState()


class LolaCache(Cache):
    def __init__(self, num_layers: int):
        super().__init__(layers=[LolaCacheLayer() for _ in range(num_layers)])

    def state(self, layer_idx: int) -> LolaState:
        return self.layers[layer_idx].state

    def nbytes_by_tier(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for layer in self.layers:
            for k, v in layer.state.nbytes_by_tier().items():
                total[k] = total.get(k, 0) + v
        return total

    def reorder_cache(self, beam_idx):
        raise NotImplementedError("beam search is not supported with LoLA attention")
