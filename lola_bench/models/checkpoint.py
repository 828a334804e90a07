"""LoLA linearization checkpoints: feature maps + window factors (+ optional LoRA).

What ``--lola-ckpt`` accepts (``checkpoint_files``):
  DIR                     a lola-bench checkpoint directory:
                            lola.safetensors  model.layers.{i}.self_attn.{feature_map_q.layer, feature_map_k.layer,
                                              window_factors}
                            lola.json         provenance: base model, feature map, combine, shapes, data, steps
                            adapter/          optional peft LoRA adapter
  FILE                    a ``.pt`` / ``.bin`` (torch.load, weights_only) or ``.safetensors`` state dict, flat or
                          wrapped as LoLCATs' trainer saves it: ``{'model_state_dict': {...}, 'step': int, ...}``
  hf://ORG/NAME/PATH      a file in a Hugging Face hub repository (``hf_hub_download``; the local HF cache offline)
  A,B,...                 several of the above, loaded in order (a later file's entry replaces an earlier one, as
                          LoLCATs' sequential ``load_state_dict`` does): LoLA's evaluation loads the distilled
                          file (feature maps + window factors) and the fine-tuned "ft-lora" file together:
                          ``--lola-ckpt distill.pt,ft-lora.pt``.

Entries are recognised by their tail, whatever prefix precedes ``layers.{i}.`` (none, ``model.``,
``model.model.``, ``base_model.model.model.``):
  layers.{i}.self_attn.feature_map_{q,k}[.mlp].layer   (H, head_dim, f) hedgehog projection; phi dim 2f, f != head_dim
                                                        allowed (LoLCATs' Llama-3.1-8B files: (32, 128, 64))
  layers.{i}.self_attn.window_factors                   (H,) or LoLCATs' (1, H, 1, 1), loaded unchanged
  layers.{i}.<module path>.lora_{A,B}[.<adapter>].weight  peft LoRA (r, in) / (out, r), attached with peft
Any other entry is an error: nothing in a file is dropped silently.

This module finds, reads and describes checkpoints (paths, hub files, metadata, fingerprint); loading one into
a patched model is ``checkpoint_load.py``, writing lola-bench's own format ``checkpoint_save.py``.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from ..paths import PACKAGE_DIR

SHIPPED = {"smollm2-135m": PACKAGE_DIR / "data" / "smollm2-135m-lola"}
WEIGHTS, META = "lola.safetensors", "lola.json"
HUB_SCHEME = "hf://"
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
WRAPPER_KEY = "model_state_dict"
LOLCATS_COMBINE = "lolcats"   # the formula LoLCATs' distillation trains window factors with

_FMAP = re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn\.(feature_map_q|feature_map_k)(?:\.mlp)?\.layer$")
_FACTORS = re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn\.window_factors$")
_LORA = re.compile(r"(?:^|\.)(layers\.(\d+)\.(?:[A-Za-z0-9_]+\.)*?([A-Za-z0-9_]+))\.lora_(A|B)(?:\.[A-Za-z0-9_]+)?"
                   r"\.weight$")
# metadata fields a lola.json may carry, with the type each must have
_META_TYPES = {"sinks": int, "combine": str, "feature_map": str, "base_model": str, "tokens": int, "steps": int,
               "window": int, "feature_dim": int}


def shipped_checkpoint(spec: str) -> Path | None:
    p = SHIPPED.get(spec)
    return p if p is not None and (p / WEIGHTS).is_file() else None


def resolve_checkpoint(model_settings, feature_map: str | None) -> tuple[str | None, str]:
    """Pick the checkpoint and the feature map: an explicit --lola-ckpt wins; the embedded model gets its shipped
    checkpoint unless 'none' or a training-free feature map is asked for."""
    ck = model_settings.lola_ckpt
    if ck and ck.lower() == "none":
        return None, feature_map or "hedgehog-identity"
    if ck:
        meta = read_meta(ck)
        fm = meta.get("feature_map") or "hedgehog"
        if feature_map and feature_map != fm:
            raise UserError(f"--feature-map {feature_map} does not match the checkpoint's feature map {fm}")
        return ck, fm
    shipped = shipped_checkpoint(model_settings.spec)
    if shipped and feature_map in (None, "hedgehog"):
        return str(shipped), "hedgehog"
    if feature_map == "hedgehog":
        raise UserError("--feature-map hedgehog needs a linearization checkpoint (--lola-ckpt PATH; make one with "
                        "`lola-bench linearize`), or use a training-free map: hedgehog-identity, elu, relu, taylor")
    return None, feature_map or "hedgehog-identity"


# ---- where the files are ----------------------------------------------------------------------------------------
def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() not in ("0", "", "false", "no", "off")


def hub_file(spec: str) -> Path:
    """``hf://ORG/NAME/PATH/IN/REPO`` -> the local path of that file, downloaded with ``hf_hub_download`` (or taken
    from the local Hugging Face cache when HF_HUB_OFFLINE=1). Example:
    ``hf://hazyresearch/lolcats-llama-3.1-8b-distill/model.pt``. Any failure is a one-line UserError."""
    rest = spec[len(HUB_SCHEME):]
    parts = rest.split("/")
    if len(parts) < 3 or not all(parts):
        raise UserError(f"--lola-ckpt {spec}: a hub checkpoint is hf://ORG/NAME/FILE (e.g. "
                        f"hf://hazyresearch/lolcats-llama-3.1-8b-distill/model.pt)")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import hf_hub_download

    failures: tuple = (hf_errors.HfHubHTTPError, hf_errors.LocalEntryNotFoundError, hf_errors.EntryNotFoundError,
                       hf_errors.OfflineModeIsEnabled, hf_errors.HFValidationError, OSError, ValueError)
    try:
        import httpx

        failures += (httpx.HTTPError,)
    except ImportError:  # pragma: no cover - huggingface_hub < 1.0 uses requests (its errors are OSErrors)
        pass
    offline = _hub_offline()
    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename, local_files_only=offline))
    except failures as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if offline:
            raise UserError(f"--lola-ckpt {spec}: offline (HF_HUB_OFFLINE=1) and {filename} of {repo} is not in the "
                            f"local Hugging Face cache") from None
        raise UserError(f"--lola-ckpt {spec}: cannot download {filename} from {repo} (no network, or no such "
                        f"repository/file?): {type(e).__name__}: {first}") from None


def checkpoint_files(spec: str | os.PathLike) -> list[Path]:
    """The files/directories a --lola-ckpt value names, in load order (see the module docstring)."""
    s = str(spec)
    if Path(s).expanduser().exists():
        parts = [s]
    else:
        parts = [p.strip() for p in s.split(",")]
        if not all(parts):
            raise UserError(f"--lola-ckpt {s!r}: empty entry in a comma-separated list")
    out = []
    for part in parts:
        if part.startswith(HUB_SCHEME):
            out.append(hub_file(part))
            continue
        p = Path(part).expanduser()
        if p.is_dir():
            if not (p / WEIGHTS).is_file():
                raise UserError(f"not a LoLA checkpoint: {p} has no {WEIGHTS}")
        elif not p.is_file():
            raise UserError(f"LoLA checkpoint not found: {part}")
        out.append(p)
    return out


def checkpoint_fingerprint(spec: str | os.PathLike, exclude: tuple[str, ...] = ()) -> str:
    """Content hash of everything a --lola-ckpt value names (``records.fingerprint`` of each file or directory; a
    list hashes the ordered per-file hashes), so that ``a.pt,b.pt`` and ``hf://...`` specs have a real identity."""
    import hashlib

    from ..records import fingerprint

    files = checkpoint_files(spec)
    if len(files) == 1:
        return fingerprint(files[0], exclude)
    joined = "|".join(fingerprint(f, exclude) for f in files)
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def checkpoint_label(spec: str | os.PathLike | None) -> str:
    """What a result row says about the LoLA checkpoint: '<basename>@<first 8 hex of its fingerprint>', or
    'training-free' without one."""
    if not spec:
        return "training-free"
    name = ",".join(Path(str(p).rstrip("/")).name for p in str(spec).split(","))
    try:
        return f"{name}@{checkpoint_fingerprint(spec)[:8]}"
    except (OSError, ValueError):
        return name


# ---- reading ----------------------------------------------------------------------------------------------------
def _read_tensors(f: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(flat state dict, what the wrapper said besides the weights, e.g. {'step': 1200})."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if f.suffix == ".safetensors":
        try:
            return load_file(str(f)), {}
        except (SafetensorError, RuntimeError, OSError, ValueError) as e:
            raise UserError(f"corrupt LoLA checkpoint {f}: {str(e).splitlines()[0]}") from None
    try:
        obj = torch.load(str(f), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"LoLA checkpoint {f} holds Python objects that torch.load(weights_only=True) refuses to "
                        f"unpickle ({first[:120]}); re-save it as a plain state dict or .safetensors") from None
    except (RuntimeError, OSError, ValueError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"corrupt LoLA checkpoint {f}: {first}") from None
    extra: dict = {}
    if isinstance(obj, dict) and isinstance(obj.get(WRAPPER_KEY), dict):
        extra = {k: v for k, v in obj.items() if k != WRAPPER_KEY and isinstance(v, (int, float, str, bool))}
        extra["wrapped"] = True
        obj = obj[WRAPPER_KEY]
    if not isinstance(obj, dict):
        raise UserError(f"LoLA checkpoint {f} is not a state dict (found {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"LoLA checkpoint {f} is not a state dict: entry {bad[0]!r} is not a tensor"
                        + (f" (keys: {', '.join(list(obj)[:4])})" if len(obj) else ""))
    return dict(obj), extra


@dataclass
class Parsed:
    """A checkpoint's tensors under canonical names, with where each came from."""

    factors: dict[int, torch.Tensor] = field(default_factory=dict)                  # layer -> (H,)
    fmaps: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)        # (layer, q/k) -> (H, d, f)
    lora: dict[str, torch.Tensor] = field(default_factory=dict)                     # model.layers.i....lora_A.weight
    lora_files: list[str] = field(default_factory=list)
    lolcats: bool = False           # LoLCATs naming (.mlp.layer, (1,H,1,1) factors, a peft prefix) or wrapping
    wrapper: dict = field(default_factory=dict)
    dirs: list[Path] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    replaced: int = 0               # entries a later file replaced


def _parse_into(p: Parsed, state: dict[str, torch.Tensor], source: Path) -> None:
    seen_lora = False
    for name, t in state.items():
        m = _FMAP.search(name)
        if m:
            key = (int(m.group(1)), m.group(2))
            p.replaced += key in p.fmaps
            p.fmaps[key] = t
            p.lolcats |= ".mlp.layer" in name
        elif (m := _FACTORS.search(name)) is not None:
            layer = int(m.group(1))
            if t.dim() == 0 or sum(s != 1 for s in t.shape) > 1:
                raise UserError(f"checkpoint {source}: {name} has shape {tuple(t.shape)}; window factors are (H,) "
                                f"or LoLCATs' (1, H, 1, 1)")
            p.lolcats |= t.dim() > 1
            p.replaced += layer in p.factors
            p.factors[layer] = t.reshape(-1)
        elif (m := _LORA.search(name)) is not None:
            key = f"model.{m.group(1)}.lora_{m.group(4)}.weight"
            p.replaced += key in p.lora
            p.lora[key] = t
            seen_lora = True
        else:
            raise UserError(f"checkpoint {source} has an entry lola-bench cannot use: {name} (shape "
                            f"{tuple(t.shape)}); expected feature_map_q/k, window_factors or LoRA weights")
        p.lolcats |= name.startswith("base_model.")
    if seen_lora:
        p.lora_files.append(str(source))


def parse_checkpoint(spec: str | os.PathLike) -> Parsed:
    p = Parsed()
    for f in checkpoint_files(spec):
        p.files.append(str(f))
        if f.is_dir():
            state, extra = _read_tensors(f / WEIGHTS)
            p.dirs.append(f)
        else:
            state, extra = _read_tensors(f)
            if extra.get("wrapped"):
                p.lolcats = True
                p.wrapper.update(extra)
        if not state:
            raise UserError(f"LoLA checkpoint {f} is empty")
        _parse_into(p, state, f / WEIGHTS if f.is_dir() else f)
    if not p.factors and not p.fmaps:
        what = "only LoRA weights" if p.lora else "nothing"
        raise UserError(f"checkpoint {spec} has {what}: no window factors or feature maps (pass the distilled file "
                        f"first, e.g. --lola-ckpt distill.pt,ft-lora.pt)")
    return p


# ---- metadata ---------------------------------------------------------------------------------------------------
def _read_json_meta(d: Path) -> dict:
    f = d / META
    if not f.is_file():
        return {}
    try:
        meta = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"corrupt checkpoint metadata {f}: {e}") from None
    if not isinstance(meta, dict):
        raise UserError(f"corrupt checkpoint metadata {f}: expected a JSON object, found a {type(meta).__name__}")
    for k, typ in _META_TYPES.items():
        v = meta.get(k)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, typ) or (typ is int and v < 0):
            want = "an integer >= 0" if typ is int else "a string"
            raise UserError(f"corrupt checkpoint metadata {f}: {k!r} must be {want}, found {v!r}")
    return meta


def _shapes(p: Parsed) -> dict:
    """Layers, heads, head_dim and projection dim f of the feature maps, checked for consistency within the file."""
    out: dict = {"layers": len(p.factors) or len({i for i, _ in p.fmaps})}
    heads = {t.numel() for t in p.factors.values()}
    fshapes = {tuple(t.shape) for t in p.fmaps.values()}
    if any(len(s) != 3 for s in fshapes):
        bad = next(s for s in fshapes if len(s) != 3)
        raise UserError(f"checkpoint feature map weights must be (heads, head_dim, f), found {bad}")
    if len(fshapes) > 1:
        (i, which), t = next((k, t) for k, t in sorted(p.fmaps.items()) if tuple(t.shape) != tuple(
            p.fmaps[min(p.fmaps)].shape))
        raise UserError(f"checkpoint feature maps disagree: {which} in layer {i} is {tuple(t.shape)}, "
                        f"{min(p.fmaps)[1]} in layer {min(p.fmaps)[0]} is {tuple(p.fmaps[min(p.fmaps)].shape)} "
                        f"(heads, head_dim, f must match between q and k and across layers)")
    if len(heads) > 1:
        raise UserError(f"checkpoint window factors disagree on the number of heads: {sorted(heads)}")
    if fshapes:
        h, d, f = next(iter(fshapes))
        if heads and heads != {h}:
            raise UserError(f"checkpoint window factors have {heads.pop()} heads, its feature maps {h}")
        out.update(heads=h, head_dim=d, feature_dim=f, phi_dim=2 * f)
    elif heads:
        out["heads"] = heads.pop()
    return out


def _lora_meta(p: Parsed) -> dict | None:
    if not p.lora:
        return None
    from .lora import describe_lora_state

    return describe_lora_state(p.lora, [Path(f) for f in p.lora_files])


_META_CACHE: dict[tuple, dict] = {}


def _cache_key(files: list[Path]) -> tuple:
    key = []
    for f in files:
        for g in ((f / WEIGHTS, f / META) if f.is_dir() else (f,)):
            st = g.stat() if g.exists() else None
            key.append((str(g.resolve()), st.st_mtime_ns if st else None, st.st_size if st else None))
    return tuple(key)


def read_meta(path: str | os.PathLike) -> dict:
    """What a checkpoint says about itself. A lola-bench directory: its lola.json (types checked). A LoLCATs / LoLA
    file: derived from its tensors. Always present: ``format`` ('lolcats' or lola.json's format), ``files``,
    ``feature_map``, ``trained_combine`` (the formula its window factors were trained with: 'lolcats' for LoLCATs
    distillation, lola.json's 'combine' for lola-bench; None if unknown), ``layers``/``heads``/``head_dim``/
    ``feature_dim`` (the hedgehog projection width f; phi has ``phi_dim`` = 2f), ``lora`` (rank, alpha, alpha_rule,
    targets, files; None without LoRA), ``step`` (a wrapped LoLCATs file's training step)."""
    files = checkpoint_files(path)
    key = _cache_key(files)
    if key in _META_CACHE:
        return dict(_META_CACHE[key])
    json_meta: dict = {}
    for f in files:
        if f.is_dir():
            json_meta = {**json_meta, **_read_json_meta(f)}
    p = parse_checkpoint(path)
    meta = dict(json_meta)
    shapes = _shapes(p)
    if p.lolcats or not json_meta:
        meta["format"] = "lolcats" if p.lolcats else "lola-bench state dict"
    meta["files"] = [str(f) for f in files]
    meta.setdefault("feature_map", "hedgehog" if p.fmaps else "hedgehog-identity")
    meta["trained_combine"] = LOLCATS_COMBINE if p.lolcats and not json_meta else json_meta.get("combine")
    meta.update(shapes)
    lora = _lora_meta(p)
    adapters = [str(d / "adapter") for d in p.dirs if (d / "adapter").is_dir()]
    if lora is None and adapters:
        lora = {**(json_meta.get("lora") or {}), "adapter": adapters[-1], "alpha_rule": "adapter_config.json"}
    meta["lora"] = lora
    if "step" in p.wrapper:
        meta["step"] = p.wrapper["step"]
    meta["wrapped"] = bool(p.wrapper.get("wrapped"))
    meta["replaced_entries"] = p.replaced  # entries of an earlier file that a later one in the list replaced
    _META_CACHE[key] = meta
    return dict(meta)


# ---- compatibility helpers kept for callers of the old API --------------------------------------------------------
def map_lolcats_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LoLCATs names (``...layers.3.self_attn.feature_map_q.mlp.layer``, window factors (1, H, 1, 1), any prefix) ->
    ours; LoRA entries -> ``model.layers.{i}.<module>.lora_{A,B}.weight``. Anything else is an error."""
    p = Parsed()
    _parse_into(p, state, Path("<state dict>"))
    out = {f"model.layers.{i}.self_attn.window_factors": t for i, t in p.factors.items()}
    out.update({f"model.layers.{i}.self_attn.{w}.layer": t for (i, w), t in p.fmaps.items()})
    out.update(p.lora)
    return out


def is_lolcats_format(state: dict[str, torch.Tensor]) -> bool:
    """LoLCATs files carry a peft prefix, ``.mlp.layer`` feature maps, or (1, H, 1, 1) window factors."""
    return any(k.startswith("base_model.") or ".mlp.layer" in k or (k.endswith("window_factors") and t.dim() > 1)
               for k, t in state.items())

def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """All of a checkpoint's tensors under lola-bench's names (``map_lolcats_names``)."""
    p = parse_checkpoint(path)
    out = {f"model.layers.{i}.self_attn.window_factors": t for i, t in p.factors.items()}
    out.update({f"model.layers.{i}.self_attn.{w}.layer": t for (i, w), t in p.fmaps.items()})
    out.update(p.lora)
    return out
