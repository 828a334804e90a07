"""Frozen run configuration shared by every command, serialized into each run's config.json.

Settings are resolved once, here: ``LolaFlags`` (what the user typed, ``None`` = not given) plus the
checkpoint's metadata become the LoLA configuration of a run (``lola_config_and_sources``; runs.resolve_variants
adds the checkpoint resolution and builds the ``AttentionSettings`` a run evaluates),
and ``variant_columns`` is the one description of a variant that every result row carries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from .attention.config import EVICT_AT, LolaConfig
from .errors import UserError

ATTN_MODES = ("full", "base", "lola", "evict")
KERNEL_MODES = ("auto", "torch", "triton")
DECODE_MODES = ("auto", "graphed", "eager")   # --decode-mode (evals/timing.py graphed_decode_on)


@dataclass(frozen=True)
class ModelSettings:
    spec: str = "smollm2-135m"
    device: str = "auto"
    dtype: str = "auto"
    lola_ckpt: str | None = None     # None = the shipped checkpoint for the embedded model, if any; "none" = no ckpt

    def to_dict(self) -> dict:
        return asdict(self)


def check_kernels(kernels: str) -> str:
    if kernels not in KERNEL_MODES:
        raise UserError(f"--kernels {kernels!r}: choose auto, torch or triton")
    return kernels


@dataclass(frozen=True)
class AttentionSettings:
    """One attention variant under test: full softmax, base (window + linear, lambda = 0), LoLA, or evict (KV
    eviction: LoLA's window and scored sparse cache on the unmodified model, pairs that leave are dropped; no feature
    map, no checkpoint: ``LolaConfig.fold`` off; ``LolaConfig.evict_at`` says whether it chooses at every chunk
    boundary or once, after a full-attention prefill).

    ``kernels`` is the LoLA implementation asked for: ``auto`` (Triton kernels on CUDA when available, the torch
    path elsewhere), ``torch``, or ``triton`` (wherever Triton runs, e.g. TRITON_INTERPRET=1 on CPU; configurations
    without a kernel still run the torch path). What actually ran is counted per layer call
    (``models.patch.implementation_used``) and written into every result row.
    """

    mode: str = "lola"
    lola: LolaConfig | None = None
    kernels: str = "auto"
    origin: str = ""                 # where combine/gqa/chunk/sinks came from (flag, preset, checkpoint, default)

    def __post_init__(self):
        if self.mode not in ATTN_MODES:
            raise UserError(f"unknown --attn {self.mode!r}: choose {', '.join(ATTN_MODES)}")
        if self.mode != "full" and self.lola is None:
            raise UserError(f"--attn {self.mode} needs a LoLA config")
        check_kernels(self.kernels)

    @classmethod
    def build(cls, mode: str, lola: LolaConfig, kernels: str = "auto", origin: str = "",
              evict_at: str = "boundary") -> AttentionSettings:
        """The variant ``mode`` of the resolved LoLA config ``lola``; ``evict_at`` applies to ``evict`` only."""
        if mode == "full":
            return cls("full", None, kernels)
        if mode == "base":
            return cls("base", replace(lola, sparse=0), kernels, origin)
        if mode == "evict":
            return cls("evict", replace(lola, fold=False, evict_at=evict_at), kernels, origin)
        return cls(mode, lola, kernels, origin)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "lola": None if self.lola is None else self.lola.to_dict(),
                "kernels": self.kernels, "origin": self.origin}


FULL = AttentionSettings("full")


def resolved_kernels(kernels: str, device_kind: str) -> str:
    """The implementation ``kernels`` selects on a device kind: torch or triton (configurations without a kernel
    still fall back to torch at run time, and the rows say so)."""
    if kernels == "torch" or (kernels == "auto" and device_kind != "cuda"):
        return "torch"
    return "triton"


# Named configurations. "paper" is the LoLA authors' method as their code computes it (lukemcdermotttt/LoLA,
# branch new_eval, 679769f): their output formula, selection per query head, update cadence = window, no attention
# sinks. The others add the window / sparse-cache sizes of their evaluation configs for those models.
PRESETS: dict[str, dict] = {
    "paper": {"combine": "lola", "gqa": "expanded", "chunk": None, "sinks": 0},
    "paper-llama3.1-8b": {"combine": "lola", "gqa": "expanded", "chunk": None, "sinks": 0, "window": 64,
                          "sparse": 64},     # configs/eval inference_llama3_1_8b_lola.yaml at 679769f
    "paper-llama3.2-1b": {"combine": "lola", "gqa": "expanded", "chunk": None, "sinks": 0, "window": 256,
                          "sparse": 256},    # configs/eval inference_llama3_2_1b_lola.yaml at 679769f
}
# Where neither a flag, a preset nor the checkpoint says otherwise: the authors' choices (sizes: ours).
DEFAULTS = {"window": 64, "sparse": 512, "combine": "lola", "gqa": "expanded", "chunk": None, "sinks": 0}
RESOLVED = ("window", "sparse", "combine", "gqa", "chunk", "sinks")


@dataclass(frozen=True)
class LolaFlags:
    """The LoLA flags as typed (``None``: not given, so a preset, the checkpoint or the default applies)."""

    window: int | None = None
    sparse: int | None = None        # lambda
    scorer: str = "sre"
    feature_map: str | None = None
    combine: str | None = None
    sinks: int | None = None
    gqa: str | None = None
    chunk: int | None = None
    seed: int = 0
    preset: str | None = None
    evict_at: str = "boundary"       # --attn evict only: boundary | prompt_end (LolaConfig.evict_at)


def check_evict_at(value: str, modes) -> str:
    """``--evict-at``: a known value, and prompt_end only where an ``evict`` variant runs (UserError otherwise)."""
    if value not in EVICT_AT:
        raise UserError(f"unknown --evict-at {value!r}: choose {' or '.join(EVICT_AT)}")
    if value != "boundary" and "evict" not in modes:
        raise UserError(f"--evict-at {value} applies to --attn evict only (LoLA and its base fold at every chunk "
                        "boundary): add evict to --attn or drop the flag")
    return value


def check_preset(name: str | None) -> dict:
    if name is None:
        return {}
    if name not in PRESETS:
        raise UserError(f"unknown --preset {name!r}: choose {', '.join(PRESETS)}")
    return PRESETS[name]


def checkpoint_defaults(meta: dict, ckpt: str | None = None) -> dict:
    """What a checkpoint's metadata (``models.checkpoint.read_meta``) says about how it must run: its formula,
    attention sinks and GQA layout; {} without one. A file whose factors were trained for another formula (LoLCATs
    distillation) says nothing here: LoLA's authors evaluate those files with their own formula, so the default
    applies."""
    out = {}
    sinks = meta.get("sinks")
    if sinks is not None:
        if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
            raise UserError(f"checkpoint {ckpt}: 'sinks' in its metadata must be an integer >= 0, got {sinks!r}")
        out["sinks"] = sinks
    combine = meta.get("combine")
    if combine is not None:
        if not isinstance(combine, str):
            raise UserError(f"checkpoint {ckpt}: 'combine' in its metadata must be a string, got {combine!r}")
        out["combine"] = combine
    trained = meta.get("lola_config") if isinstance(meta.get("lola_config"), dict) else {}
    if isinstance(trained.get("gqa"), str):
        out["gqa"] = trained["gqa"]
    return out


def resolve_lola(flags: LolaFlags, meta: dict | None = None, ckpt: str | None = None) -> tuple[dict, dict]:
    """(values, where each came from) for window, sparse, combine, gqa, chunk, sinks: a flag, else the preset,
    else the checkpoint's metadata (``meta``), else the default. A flag that contradicts the preset is an error."""
    preset = check_preset(flags.preset)
    meta = checkpoint_defaults(meta or {}, ckpt)
    values, source = {}, {}
    for key in RESOLVED:
        flag = getattr(flags, key)
        if flag is not None:
            if key in preset and preset[key] != flag:
                raise UserError(f"--preset {flags.preset} sets {key} = {preset[key]!r}; drop the conflicting "
                                f"flag ({flag!r}) or the preset")
            values[key], source[key] = flag, "flag"
        elif key in preset:
            values[key], source[key] = preset[key], f"preset {flags.preset}"
        elif key in meta:
            values[key], source[key] = meta[key], "checkpoint"
        else:
            values[key], source[key] = DEFAULTS[key], "default"
    return values, source


def lola_config(flags: LolaFlags, feature_map: str, meta: dict | None = None) -> LolaConfig:
    """LolaConfig from flags, preset, checkpoint metadata and defaults (see ``resolve_lola``)."""
    return lola_config_and_sources(flags, feature_map, meta)[0]


def lola_config_and_sources(flags: LolaFlags, feature_map: str, meta: dict | None = None,
                            ckpt: str | None = None) -> tuple[LolaConfig, str]:
    v, src = resolve_lola(flags, meta, ckpt)
    cfg = LolaConfig(window=v["window"], sparse=v["sparse"], scorer=flags.scorer, feature_map=feature_map,
                     combine=v["combine"], gqa=v["gqa"], chunk=v["chunk"], seed=flags.seed, sinks=v["sinks"])
    origin = " ".join(f"{k}={src[k]}" for k in ("combine", "gqa", "chunk", "sinks"))
    return cfg, origin


VARIANT_COLUMNS = ("attn", "window", "lambda", "sinks", "scorer", "feature_map", "evict_at")


def variant_columns(attn: AttentionSettings) -> dict:
    """The columns that say which variant produced a result row (empty for full attention; ``evict_at`` for
    eviction only)."""
    c = attn.lola
    return {"attn": attn.mode, "window": c.window if c else None, "lambda": c.sparse if c else None,
            "sinks": c.sinks if c else None, "scorer": c.scorer if c else None,
            "feature_map": c.feature_map if c and c.fold else None,
            "evict_at": c.evict_at if c and not c.fold else None}


def implementation_columns(attn: AttentionSettings, used: str | None) -> dict:
    """How the variant was computed: its formula, GQA layout and update cadence, the implementation that actually
    ran (``used``: from the layer call counters; None when nothing ran) and the CPU threads torch used."""
    import torch

    c = attn.lola
    return {"combine": c.combine if c and c.fold else None, "gqa": c.gqa if c else None,
            "chunk": c.chunk_size if c else None,
            "settings_from": attn.origin or None if c else None,
            "implementation": used if c else "torch (transformers attention)", "threads": torch.get_num_threads()}
