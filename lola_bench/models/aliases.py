"""Hub ids that name the embedded model: offline, run the shipped copy instead of trying (and failing) to
download; online, the hub's own weights load through the usual hub path."""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

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


@functools.lru_cache(maxsize=None)
def hub_reachable(timeout_s: float = 2.0) -> bool:
    """A TCP connection to the hub's endpoint (HF_ENDPOINT, default huggingface.co:443) opens within ``timeout_s``:
    one quick probe per process instead of the hub client's retries (most of a minute) on a machine without network."""
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)),
                                 timeout=timeout_s).close()
        return True
    except OSError:
        return False


def resolve_alias(spec: str) -> tuple[str, str | None]:
    """(the spec to load, a one-line notice or None). A hub id of the embedded model loads the hub's weights when
    they are in the local Hugging Face cache or the hub can be reached (the real hub path, as for any hub id);
    offline (HF_HUB_OFFLINE=1, or no connection to the hub) it runs the embedded copy instead of retrying for most
    of a minute before failing."""
    target = HUB_ALIASES.get(spec.lower())
    if target is None or hub_cached(spec):
        return spec, None
    if hub_offline():
        why = "HF_HUB_OFFLINE=1 and it is"
    elif int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return spec, None       # data-parallel ranks must load one model: no per-rank probe (offline: HF_HUB_OFFLINE=1)
    elif not hub_reachable():
        why = "the hub cannot be reached and it is"
    else:
        return spec, None
    return target, (f"--model {spec}: {why} not in the local Hugging Face cache, so the embedded copy runs instead "
                    f"({target}: the same model as a Q4_1 GGUF, dequantized; close to, not identical with, the hub's "
                    "weights). Put the hub weights in the cache to run those.")
