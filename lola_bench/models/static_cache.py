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
from ..attention.static_merge import advance_host_merge, static_merge, steady_reason
from ..errors import UserError
from .cache import LolaCache, LolaCacheLayer
from .patch import lola_modules

MERGE_MODES = ("copy", "in place", "graph")


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
    """``merge``: how the steady chunk-boundary merges run (``attention.static_merge``; the others always through a
    ``LolaState`` copy with the driver's ``evict``): "copy" like the others, "in place" (``static_merge``, eager),
    or "graph": the first one in place, which also warms it up, then every layer's merge recorded as one CUDA graph
    and replayed at every later steady boundary (CUDA only; a failed capture is kept in ``merge_capture_error`` and
    the merges stay in place)."""

    def __init__(self, states: list[StaticLolaState], merge: str = "copy"):
        Cache.__init__(self, layers=[StaticLolaCacheLayer(s) for s in states])
        if merge not in MERGE_MODES:
            raise ValueError(f"merge must be one of {', '.join(MERGE_MODES)}, not {merge!r}")
        self.merge = merge
        self.merge_graph = None
        self.merge_capture_error: str | None = None

    @property
    def states(self) -> list[StaticLolaState]:
        return [layer.state for layer in self.layers]

    def prepare(self, evict: Evict = evict_before) -> bool:
        """Before a step, every layer: the chunk-boundary merge if the next token needs it (True if it ran)."""
        states = self.states
        steady = self.merge != "copy"
        ws = states[0].boundary()
        if self.merge == "graph" and ws is not None and all(steady_reason(s, ws) is None for s in states):
            if self.merge_graph is None:
                for s in states:
                    s.prepare(evict, steady=True)
                self._capture_merge()
            else:
                self.merge_graph.replay()
                for s in states:
                    advance_host_merge(s)
                    s.merges["graph"] += 1
                    s.check_capacity()
            return True
        return any([s.prepare(evict, steady) for s in states])

    def _capture_merge(self) -> None:
        """Record every layer's ``static_merge`` as one CUDA graph (nothing runs: the states stay as they are)."""
        import torch

        from .graph_capture import capture, first_line

        states = self.states
        if states[0].k.device.type != "cuda":
            self.merge, self.merge_capture_error = "in place", "not a CUDA device"
            return
        try:
            with torch.cuda.device(states[0].k.device):
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.no_grad():        # never record autograd work (a learnable feature map's) in the graph
                    self.merge_graph = capture(lambda: [static_merge(s) for s in states], side)
                torch.cuda.current_stream().wait_stream(side)
        except Exception as e:      # noqa: BLE001 - recorded; the merges go on in place
            self.merge, self.merge_capture_error = "in place", first_line(e)
            torch.cuda.synchronize()

    def merge_counts(self) -> dict[str, int]:
        """Chunk-boundary merges so far (every layer's together), by how they ran: copy, static (in place), graph."""
        return dict(self.states[0].merges) if self.states else {}

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


def to_static_cache(model, cache: LolaCache, max_len: int | None = None, merge: str = "copy") -> StaticLolaCache:
    """The static copy of a prefilled ``cache`` of the patched ``model`` (every layer's state, exactly).
    ``max_len``: the longest sequence it will hold (caps the slots when lambda or the window exceeds it);
    ``merge``: how its steady merges run (``StaticLolaCache``)."""
    mods = lola_modules(model)
    if len(mods) != len(cache.layers):
        raise UserError(f"the cache has {len(cache.layers)} layers, the model {len(mods)} LoLA layers")
    return StaticLolaCache([StaticLolaState.from_state(cache.state(m.layer_idx), m.params(), max_len)
                            for m in mods], merge)
