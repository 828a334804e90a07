"""Equal-memory comparison: the model's attention shapes (from its configuration, no weights loaded) and the
largest sparse cache λ whose cache bytes at a context length fit a budget.

Bytes are ``attention.state.analytic_bytes`` summed over its tiers (window, sparse, linear state, positions and
attention mass), all layers, batch 1: the same count as the ``cache_mib`` column, taken at ``ctx`` tokens (the
rows measure it after generation, a few tokens later, so they can sit slightly above the budget). Eviction cells with
``evict_at = prompt_end`` are sized the same way (the λ of their boundary twins): after the prompt they hold the same
cache (up to one chunk less window when the prompt ends on a chunk boundary); while generating, their window grows by
one pair per token where boundary mode's slides, so their ``cache_mib`` after generation sits above the budget by the
generated tokens' pairs. Their peak during the full-attention prefill is the whole KV cache, which the budget does not
cover.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..attention.config import LolaConfig
from ..attention.state import analytic_bytes
from ..errors import UserError

MIB = 2 ** 20
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


@dataclass(frozen=True)
class ModelShapes:
    layers: int
    heads: int                 # query heads
    kv_heads: int
    head_dim: int
    dtype: torch.dtype         # the dtype the K/V cache is held in

    @property
    def dtype_bytes(self) -> int:
        return torch.empty(0, dtype=self.dtype).element_size()


def _from_config(cfg: dict, dtype: torch.dtype, what: str) -> ModelShapes:
    try:
        heads = int(cfg["num_attention_heads"])
        head_dim = int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads)
        return ModelShapes(int(cfg["num_hidden_layers"]), heads, int(cfg.get("num_key_value_heads") or heads),
                           head_dim, dtype)
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{what} lacks the attention shapes (num_hidden_layers, num_attention_heads, hidden_size) "
                        "that --budget-mib needs") from None


def model_shapes(spec: str, dtype: str = "float32") -> ModelShapes:
    """Layers, heads, KV heads and head dim of a model spec without loading it: random presets, the embedded
    SmolLM2-135M (the shapes of the smollm2-135m preset) and local directories (config.json). GGUF files and hub
    ids give a UserError (their shapes are only known after loading)."""
    from ..models.loading import EMBEDDED, RANDOM_PRESETS

    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    dt = DTYPES[dtype]
    if spec == EMBEDDED:
        return _from_config(RANDOM_PRESETS["smollm2-135m"], dt, "the embedded model")
    if spec.startswith("random:"):
        preset = spec.split(":", 1)[1]
        if preset not in RANDOM_PRESETS:
            raise UserError(f"unknown random preset {preset!r}: choose one of {', '.join(RANDOM_PRESETS)}")
        return _from_config(RANDOM_PRESETS[preset], dt, f"preset {preset}")
    path = Path(spec).expanduser() / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"--budget-mib needs the model's shapes before loading it: {spec} has no readable "
                        "config.json (use the embedded model, a random preset or a local model directory)") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path} is not a JSON object")
    cfg = cfg.get("text_config", cfg) if "num_attention_heads" not in cfg else cfg
    return _from_config(cfg, dt, str(path))


def feature_dim(cfg: LolaConfig, head_dim: int, proj_dim: int | None = None) -> int:
    """phi's width for the linear state (0 under eviction); ``proj_dim``: a learned hedgehog projection width."""
    if not cfg.fold:
        return 0
    from ..attention.feature_maps import make_feature_map

    return make_feature_map(cfg.feature_map, 1, head_dim, proj_dim).feature_dim


def cache_bytes(cfg: LolaConfig, ctx: int, shapes: ModelShapes, proj_dim: int | None = None) -> int:
    """Analytic cache bytes (all tiers, all layers, batch 1) after ``ctx`` tokens."""
    tiers = analytic_bytes(cfg, ctx, batch=1, query_heads=shapes.heads, kv_heads=shapes.kv_heads,
                           head_dim=shapes.head_dim, feature_dim=feature_dim(cfg, shapes.head_dim, proj_dim),
                           dtype=shapes.dtype, layers=shapes.layers)
    return sum(tiers.values())


def lambda_for_budget(cfg: LolaConfig, ctx: int, shapes: ModelShapes, budget_bytes: float,
                      proj_dim: int | None = None) -> int | None:
    """The largest λ whose cache bytes at ``ctx`` do not exceed ``budget_bytes`` (None: not even λ = 0 fits).

    Bytes grow with λ until the sparse cache holds every candidate; past that point a larger λ buys nothing, so
    the answer is capped at the smallest λ that holds them all (there λ + 1 fits too, and is the same cell)."""
    def cost(lam: int) -> int:
        return cache_bytes(_with(cfg, lam), ctx, shapes, proj_dim)

    if cost(0) > budget_bytes:
        return None
    top = max(0, ctx)                       # the sparse cache never holds more than ctx pairs
    if top > 0 and cost(top - 1) == cost(top):
        top = _plateau_start(cost, top)
    if cost(top) <= budget_bytes:
        return top
    lo, hi = 0, top                         # cost(lo) fits, cost(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if cost(mid) <= budget_bytes:
            lo = mid
        else:
            hi = mid
    return lo


def _plateau_start(cost, top: int) -> int:
    """The smallest λ with cost(λ) == cost(top) (cost is non-decreasing in λ)."""
    target, lo, hi = cost(top), 0, top      # cost(hi) == target
    if cost(lo) == target:
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if cost(mid) == target:
            hi = mid
        else:
            lo = mid
    return hi


def _with(cfg: LolaConfig, lam: int) -> LolaConfig:
    from dataclasses import replace

    return replace(cfg, sparse=lam)


def parse_budgets(values) -> tuple[float, ...]:
    """Budgets in MiB (numbers > 0), deduplicated and sorted."""
    out = []
    for v in values:
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise UserError(f"--budget-mib values must be numbers (MiB), got {v!r}") from None
        if isinstance(v, bool) or not x > 0 or x != x or x == float("inf"):
            raise UserError(f"--budget-mib values must be > 0 MiB, got {v!r}")
        out.append(int(x) if x == int(x) else x)
    return tuple(sorted(set(out)))
