"""LoLCATs-style linearization of a loaded model: attention transfer (stage 1) and optional LoRA (stage 2).

Stage 1, attention transfer. The whole model is frozen and patched with LoLA (sparse = 0); only the feature maps
(Hedgehog ``.layer``) and the window factors train. One forward of the frozen model per batch runs with exact
softmax attention (a "teacher" forward of each LolaAttention), capturing every layer's post-RoPE q, k, v and its
softmax output; each layer's loss is 1000 * MSE(hybrid_attention(q, k, v), softmax output), summed over layers.
Teacher hidden states flow through the network, so the layer losses are local and each layer's backward runs
right after its loss (peak memory of one layer's L x L graph).

Stage 2 (``lora_rank > 0``): LoRA rank r, alpha 2r on q/k/v/o, next-token loss through the linearized attention
(LolaAttention's training path = hybrid_attention), feature maps and window factors frozen.

OUT gets: lola.safetensors + lola.json (``save_lola_checkpoint``), adapter/ (stage 2), loss.png, and
train_state/ (written every ``checkpoint_every`` steps; a rerun with the same OUT continues from it).

This module holds the run's settings (``LinearizeSettings``), the ``linearize`` entry point and the loss summary
and plot it writes. The training itself (teacher forward, per-layer losses, the step loop, resumable train state)
is ``transfer.py``; the optional linear-weight calibration is ``calibration.py``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..attention.config import LolaConfig
from ..errors import UserError
from .calibration import calibrate_linear_weight
from .checkpoint_save import save_lola_checkpoint
from .patch import lola_modules
from .transfer import MSE_SCALE, TrainingRun

# Window-factor init: LoLCATs' -2.1972 (sigmoid = 0.1: softmax part weighted 0.1 against the linear part's 1).
# 'gated' mixes g : (1 - g); log(0.1) gives the same 0.1 : 1 ratio, i.e. the same starting function.
# (SmolLM2-135M, seq 1024, window 64: window-heavy inits start ~17% lower but fall slower; after 6 steps the
# LoLCATs init is ahead, 1424 vs 1801 summed loss for init 2.0.)
LOLCATS_FACTOR_INIT = math.log(0.1 / 0.9)
GATED_FACTOR_INIT = math.log(0.1)
# 'calibrated' weighs the linear part by exp(factor) against unshifted exp(q.k/sqrt d): 3.5 is about the median
# per-head log(mean exp(s) / mean phi(q).phi(k)) over far pairs of SmolLM2-135M with hedgehog-identity maps.
CALIBRATED_FACTOR_INIT = 3.5


@dataclass(frozen=True)
class LinearizeSettings:
    """Everything that determines a linearization run (a resume must use the same values)."""
    data_paths: tuple[str, ...]
    tokens: int                      # stage-1 training tokens (rounded up to whole steps)
    seq_len: int = 1024
    window: int = 64
    feature_map: str = "hedgehog"
    combine: str = "calibrated"
    lr: float = 1e-2
    batch_size: int = 1
    factor_init: float | None = None  # None: LoLCATs' -2.1972 for 'lolcats', log(0.1) for 'gated'
    lora_rank: int = 0
    sinks: int = 0                   # first positions kept in the exact softmax part (never linear)
    lora_tokens: int | None = None   # stage-2 tokens; None = same as ``tokens``
    lora_lr: float = 1e-4
    seed: int = 0
    checkpoint_every: int = 20       # not part of the resume identity

    def __post_init__(self):
        paths = (self.data_paths,) if isinstance(self.data_paths, (str, os.PathLike)) else self.data_paths
        object.__setattr__(self, "data_paths", tuple(str(p) for p in paths))
        if not self.data_paths:
            raise UserError("no training data given")
        for name in ("tokens", "seq_len", "batch_size", "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise UserError(f"{name} must be a positive integer, got {v!r}")
        if self.seq_len < 2:
            raise UserError(f"seq_len must be >= 2, got {self.seq_len}")
        if not (self.lr > 0 and self.lora_lr > 0):
            raise UserError("learning rates must be positive")
        if not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise UserError(f"lora_rank must be >= 0, got {self.lora_rank!r}")
        if self.lora_tokens is not None and (not isinstance(self.lora_tokens, int) or self.lora_tokens <= 0):
            raise UserError(f"lora_tokens must be a positive integer, got {self.lora_tokens!r}")
        self.lola_config()  # validates window, feature map, combine

    @property
    def window_factor_init(self) -> float:
        if self.factor_init is not None:
            return float(self.factor_init)
        # lola: the LoLA/LoLCATs code's init, sigmoid(factor) = 0.1 (the same logit as lolcats)
        inits = {"lolcats": LOLCATS_FACTOR_INIT, "lola": LOLCATS_FACTOR_INIT, "calibrated": CALIBRATED_FACTOR_INIT}
        return inits.get(self.combine, GATED_FACTOR_INIT)

    def lola_config(self) -> LolaConfig:
        return LolaConfig(window=self.window, sparse=0, feature_map=self.feature_map, combine=self.combine,
                          factor_init=self.window_factor_init, sinks=self.sinks)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def stage1_steps(self) -> int:
        return math.ceil(self.tokens / self.tokens_per_step)

    @property
    def stage2_steps(self) -> int:
        if not self.lora_rank:
            return 0
        return math.ceil((self.lora_tokens or self.tokens) / self.tokens_per_step)

    @property
    def total_steps(self) -> int:
        return self.stage1_steps + self.stage2_steps

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "data_paths": list(self.data_paths),
                "window_factor_init": self.window_factor_init, "stage1_steps": self.stage1_steps,
                "stage2_steps": self.stage2_steps}

    def resume_key(self) -> dict:
        """Settings a resumed run must share. Without LoRA the token budget may change between runs (train on
        from a finished checkpoint, or stop earlier): the data order does not depend on it."""
        d = self.to_dict()
        d.pop("checkpoint_every")
        if not self.sinks:  # train states written before sinks existed resume as sinks = 0
            d.pop("sinks")
        if not self.lora_rank:
            for k in ("tokens", "lora_tokens", "stage1_steps", "stage2_steps"):
                d.pop(k, None)
        return d


def _loss_summary(losses: list[float], points: int = 200) -> dict:
    if not losses:
        return {"steps": 0}
    k = min(10, len(losses))
    stride = max(1, math.ceil(len(losses) / points))
    return {"steps": len(losses), "first": losses[0], "last": losses[-1], "min": min(losses),
            "first_mean": sum(losses[:k]) / k, "last_mean": sum(losses[-k:]) / k,
            "curve": [[i + 1, round(v, 6)] for i, v in enumerate(losses) if i % stride == 0 or i == len(losses) - 1]}


def _layer_means(rows: list[list[float]], last: int = 10) -> list[float]:
    rows = rows[-last:]
    return [round(sum(r[i] for r in rows) / len(rows), 6) for i in range(len(rows[0]))] if rows else []


def plot_losses(history: dict, path: Path, stage1_steps: int) -> Path:
    """Loss curve(s): stage-1 attention-transfer loss (log scale) and, if present, stage-2 LM loss."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s1 = history["loss"][:stage1_steps]
    lm = history["lm_loss"]
    fig = Figure(figsize=(10 if lm else 6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2 if lm else 1, 1)
    ax.plot(range(1, len(s1) + 1), s1, lw=1)
    ax.set(xlabel="step", ylabel="sum over layers of 1000 x MSE", title="stage 1: attention transfer", yscale="log")
    ax.grid(alpha=0.3)
    if lm:
        ax2 = fig.add_subplot(1, 2, 2)
        ax2.plot(range(stage1_steps + 1, stage1_steps + len(lm) + 1), lm, lw=1, color="C1")
        ax2.set(xlabel="step", ylabel="next-token loss", title="stage 2: LoRA")
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    return path


def linearize(loaded_model, data_paths, *, tokens: int, seq_len: int = 1024, window: int = 64,
              feature_map: str = "hedgehog", combine: str = "calibrated", lr: float = 1e-2, lora_rank: int = 0,
              lora_tokens: int | None = None, lora_lr: float = 1e-4, batch_size: int = 1,
              factor_init: float | None = None, sinks: int = 0, seed: int = 0, out, resume: bool = True,
              progress=None, calibrate: bool = False, calibrate_progress=None,
              checkpoint_every: int = 20, max_steps: int | None = None) -> dict:
    """Linearize ``loaded_model`` (a LoadedModel; patched in place) and write the checkpoint to ``out``.

    ``progress(step, total_steps, tokens_seen, loss, tokens_per_s)`` is called after every step (steps count
    across both stages). ``max_steps`` stops after that many steps of this call (state saved; rerun to resume).
    Returns a summary dict (the checkpoint metadata plus paths), with ``complete`` False when stopped early.
    """
    from ..provenance import device_label, provenance

    s = LinearizeSettings(data_paths=data_paths, tokens=tokens, seq_len=seq_len, window=window,
                          feature_map=feature_map, combine=combine, lr=lr, batch_size=batch_size,
                          factor_init=factor_init, lora_rank=lora_rank, lora_tokens=lora_tokens, lora_lr=lora_lr,
                          sinks=sinks, seed=seed, checkpoint_every=checkpoint_every)
    out = Path(out)
    run = TrainingRun(loaded_model, s, out)
    complete = run.train(resume, progress, max_steps)
    h = run.history
    summary = {"complete": complete, "out": str(out), "step": run.step, "total_steps": s.total_steps,
               "tokens_seen": run.tokens_seen, "loss": h["loss"][-1] if h["loss"] else None}
    if not complete:
        return summary
    model = loaded_model.model
    cfg0 = model.config
    s1_tokens = min(run.tokens_seen, s.stage1_steps * s.tokens_per_step)
    dev = str(run.device)
    meta = {
        "format": "lola-bench linearization v1",
        "base_model": loaded_model.spec,
        "base_model_source": loaded_model.source,
        "base_model_kind": loaded_model.kind,
        "feature_map": s.feature_map, "window": s.window, "combine": s.combine, "sparse": 0, "sinks": s.sinks,
        "window_factor_init": s.window_factor_init,
        "seq_len": s.seq_len, "batch_size": s.batch_size, "tokens": s1_tokens, "steps": s.stage1_steps,
        "lr": s.lr, "seed": s.seed, "loss_definition": f"sum over layers of {MSE_SCALE:g} * MSE(hybrid, softmax)",
        "shapes": {"layers": cfg0.num_hidden_layers, "heads": cfg0.num_attention_heads,
                   "kv_heads": cfg0.num_key_value_heads, "head_dim": lola_modules(model)[0].head_dim},
        "lola_config": s.lola_config().to_dict(),
        "data": run.data.describe(),
        "initial_layer_losses": [round(x, 6) for x in h["layer_losses"][0]],
        "final_layer_losses": _layer_means(h["layer_losses"]),
        "loss_history": _loss_summary(h["loss"][:s.stage1_steps]),
        "lora": None,
        "wall_seconds": round(run.elapsed, 1),
        "tokens_per_s": round(run.tokens_seen / run.elapsed, 1) if run.elapsed else None,
        "device": device_label(dev),
        "provenance": provenance(dev),
        "settings": s.to_dict(),
    }
    if s.lora_rank:
        from .lora import save_adapter

        save_adapter(model, out / "adapter")
        meta["lora"] = {"rank": s.lora_rank, "alpha": 2 * s.lora_rank, "targets": ["q_proj", "k_proj", "v_proj",
                        "o_proj"], "lr": s.lora_lr, "steps": s.stage2_steps,
                        "tokens": run.tokens_seen - s1_tokens, "adapter": "adapter",
                        "lm_loss_history": _loss_summary(h["lm_loss"])}
    if calibrate:
        meta["linear_weight_calibration"] = calibrate_linear_weight(loaded_model, run.data,
                                                                    progress=calibrate_progress)
    save_lola_checkpoint(model, out, meta)
    plot_losses(h, out / "loss.png", s.stage1_steps)
    return {**summary, **meta, "checkpoint": str(out), "loss_png": str(out / "loss.png")}
