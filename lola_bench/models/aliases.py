"""Hub ids that name the embedded model: run the shipped copy instead of trying (and failing) to download."""

from __future__ import annotations

import os

# hub id (lower case) -> the spec of the shipped copy of the same model
HUB_ALIASES: dict[str, str] = {"huggingfacetb/smollm2-135m-instruct": "smollm2-135m"}


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip() not in ("0", "", "false", "False", "no")


def hub_cached(repo_id: str) -> bool:
    """The model's config and weights are in the local Hugging Face cache (no network asked)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return False
    return all(isinstance(try_to_load_from_cache(repo_id, f), str) for f in ("config.json", "model.safetensors"))


def resolve_alias(spec: str) -> tuple[str, str | None]:
    """(the spec to load, a one-line notice or None). A hub id of the embedded model runs the embedded copy unless
    its weights are already in the local Hugging Face cache: lola-bench never downloads weights at run time, and a
    hub id offline would otherwise retry for most of a minute before failing."""
    target = HUB_ALIASES.get(spec.lower())
    if target is None or hub_cached(spec):
        return spec, None
    why = "HF_HUB_OFFLINE=1 and it is" if hub_offline() else "it is"
    return target, (f"--model {spec}: {why} not in the local Hugging Face cache, so the embedded copy runs instead "
                    f"({target}: the same model as a Q4_1 GGUF, dequantized; close to, not identical with, the hub's "
                    "weights). Put the hub weights in the cache to run those.")
