"""Frozen run configuration shared by every command, serialized into each run's config.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from .attention.config import LolaConfig
from .errors import UserError

ATTN_MODES = ("full", "base", "lola")


@dataclass(frozen=True)
class ModelSettings:
    spec: str = "smollm2-135m"
    device: str = "auto"
    dtype: str = "auto"
    lola_ckpt: str | None = None     # None = the shipped checkpoint for the embedded model, if any; "none" = no ckpt

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AttentionSettings:
    """One attention variant under test: full softmax, base (window + linear, lambda = 0), or LoLA."""

    mode: str = "lola"
    lola: LolaConfig | None = None

    def __post_init__(self):
        if self.mode not in ATTN_MODES:
            raise UserError(f"unknown --attn {self.mode!r}: choose full, base or lola")
        if self.mode != "full" and self.lola is None:
            raise UserError(f"--attn {self.mode} needs a LoLA config")

    @classmethod
    def build(cls, mode: str, lola: LolaConfig) -> AttentionSettings:
        if mode == "full":
            return cls("full", None)
        if mode == "base":
            return cls("base", replace(lola, sparse=0))
        return cls(mode, lola)

    @property
    def label(self) -> str:
        if self.mode == "full":
            return "full"
        c = self.lola
        return f"{self.mode}(eta={c.window},lambda={c.sparse},{c.scorer},{c.feature_map})"

    def to_dict(self) -> dict:
        return {"mode": self.mode, "lola": None if self.lola is None else self.lola.to_dict()}
