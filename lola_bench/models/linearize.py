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
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..attention.config import LolaConfig
from ..attention.hybrid import chunked_hybrid_attention, hybrid_attention
from ..data.text_data import PackedData, load_packed
from ..errors import UserError
from ..records import atomic_write_json
from .checkpoint_save import save_lola_checkpoint
from .patch import lola_modules, patch_model

# Window-factor init: LoLCATs' -2.1972 (sigmoid = 0.1: softmax part weighted 0.1 against the linear part's 1).
# 'gated' mixes g : (1 - g); log(0.1) gives the same 0.1 : 1 ratio, i.e. the same starting function.
# (SmolLM2-135M, seq 1024, window 64: window-heavy inits start ~17% lower but fall slower; after 6 steps the
# LoLCATs init is ahead, 1424 vs 1801 summed loss for init 2.0.)
LOLCATS_FACTOR_INIT = math.log(0.1 / 0.9)
GATED_FACTOR_INIT = math.log(0.1)
# 'calibrated' weighs the linear part by exp(factor) against unshifted exp(q.k/sqrt d): 3.5 is about the median
# per-head log(mean exp(s) / mean phi(q).phi(k)) over far pairs of SmolLM2-135M with hedgehog-identity maps.
CALIBRATED_FACTOR_INIT = 3.5
MSE_SCALE = 1000.0                           # LoLCATs' mse_factor
STATE_DIR, STATE_FILE = "train_state", "state.pt"
STATE_VERSION = 1


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


# ---- stage 1: teacher forward with exact softmax, capturing q, k, v and the output per layer -------------------

def _teacher_forward(attn, store: dict, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
    """Exact causal softmax attention (GQA) with the LolaAttention's own projections; records q, k, v, y."""
    q, k, v = attn.project(hidden_states, position_embeddings)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])
    store[attn.layer_idx] = (q.detach(), k.detach(), v.detach(), y.detach())
    out = y.transpose(1, 2).reshape(*hidden_states.shape[:-1], -1)
    return attn.o_proj(out), None


class teacher_mode:
    """``with teacher_mode(model) as store:`` every LolaAttention runs exact softmax and fills ``store``
    with {layer_idx: (q, k, v, y)}."""

    def __init__(self, model):
        self.mods = lola_modules(model)
        if not self.mods:
            raise UserError("teacher_mode needs a LoLA-patched model")
        self.store: dict = {}

    def __enter__(self) -> dict:
        for m in self.mods:
            m.forward = lambda *a, _m=m, **kw: _teacher_forward(_m, self.store, *a, **kw)
        return self.store

    def __exit__(self, *exc):
        for m in self.mods:
            del m.forward
        return False


def attention_transfer_losses(model, input_ids: torch.Tensor, backward: bool = True,
                              reference: bool = False) -> list[float]:
    """One stage-1 step without the optimizer: per-layer 1000*MSE(hybrid, softmax); grads accumulate if
    ``backward``. ``reference`` uses the dense ``hybrid_attention`` (O(L^2)) instead of the chunked form."""
    inner = getattr(model, "model", model)
    with torch.no_grad(), teacher_mode(model) as store:
        inner(input_ids=input_ids, use_cache=False)
    student = hybrid_attention if reference else chunked_hybrid_attention
    losses = []
    with torch.enable_grad() if backward else torch.no_grad():
        for m in lola_modules(model):
            q, k, v, y = (t.float() for t in store.pop(m.layer_idx))
            loss = F.mse_loss(student(q, k, v, m.params()), y) * MSE_SCALE
            if backward:
                loss.backward()
            losses.append(loss.item())
    return losses


def _activation_checkpointing(model, on: bool) -> None:
    """Toggle HF activation (gradient) checkpointing, under either name transformers uses."""
    kw = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # the newer transformers name
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
        else:
            model.activation_checkpointing_disable()
    elif hasattr(model, "gradient_checkpointing_enable"):
        if on:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
        else:
            model.gradient_checkpointing_disable()


# ---- the run ----------------------------------------------------------------------------------------------------

class _Run:
    def __init__(self, loaded, settings: LinearizeSettings, out: Path):
        self.loaded, self.s, self.out = loaded, settings, out
        self.model = loaded.model
        self.device = next(self.model.parameters()).device
        self.data: PackedData = load_packed(settings.data_paths, loaded.tokenizer, settings.seq_len, settings.seed)
        self.step = self.tokens_seen = self.position = 0
        self.elapsed = 0.0
        self.history = {"loss": [], "layer_losses": [], "lm_loss": [], "seconds": []}
        self.stage = 0
        self.opt = None
        self.params: dict[str, torch.nn.Parameter] = {}
        self._in_step = False

    # -- setup --
    def setup_stage1(self):
        for p in self.model.parameters():
            p.requires_grad_(False)
        patch_model(self.model, self.s.lola_config())
        self.model.eval()
        self.params = {}
        for i, m in enumerate(lola_modules(self.model)):  # fresh modules: learnable maps have requires_grad set
            m.window_factors.requires_grad_(True)
            for n, p in m.named_parameters():
                if p.requires_grad and n.startswith(("feature_map_q.", "feature_map_k.", "window_factors")):
                    self.params[f"model.layers.{i}.self_attn.{n}"] = p
        self.opt = torch.optim.AdamW(self.params.values(), lr=self.s.lr, weight_decay=0.0)
        self.stage = 1

    def setup_stage2(self):
        from .lora import add_lora, lora_config, lora_parameters

        with torch.random.fork_rng(devices=[]):  # LoRA init depends on the seed only (resume-safe)
            torch.manual_seed(self.s.seed)
            add_lora(self.model, lora_config(self.s.lora_rank, base_model=self.loaded.spec))
        self.params = lora_parameters(self.model)
        self.opt = torch.optim.AdamW(self.params.values(), lr=self.s.lora_lr, weight_decay=0.0)
        self.stage = 2

    # -- steps --
    def stage1_step(self, batch) -> float:
        layer = attention_transfer_losses(self.model, batch)
        self._in_step = True
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.history["layer_losses"].append(layer)
        return sum(layer)

    def stage2_step(self, batch) -> float:
        self.model.train()
        _activation_checkpointing(self.model, True)  # recompute layers in backward: bounds activation memory
        try:
            with torch.enable_grad():
                loss = self.model(input_ids=batch, labels=batch, use_cache=False).loss
                loss.backward()
        finally:
            self.model.eval()
            _activation_checkpointing(self.model, False)
        self._in_step = True
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.history["lm_loss"].append(loss.item())
        return loss.item()

    # -- train state --
    @property
    def state_path(self) -> Path:
        return self.out / STATE_DIR / STATE_FILE

    def save_state(self):
        state = {
            "version": STATE_VERSION, "settings": self.s.resume_key(), "data": self.data.fingerprint(),
            "stage": self.stage, "step": self.step, "tokens_seen": self.tokens_seen, "position": self.position,
            "elapsed": self.elapsed, "history": self.history,
            "params": {n: p.detach().cpu().clone() for n, p in self.params.items()},
            "lola": self._lola_state(),
            "optimizer": self.opt.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
        }
        d = self.state_path.parent
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / (STATE_FILE + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.state_path)
        atomic_write_json(d / "progress.json", {
            "step": self.step, "total_steps": self.s.total_steps, "stage": self.stage,
            "tokens_seen": self.tokens_seen, "loss": self.history["loss"][-1] if self.history["loss"] else None,
            "elapsed_s": round(self.elapsed, 1)})

    def _lola_state(self) -> dict:
        from .checkpoint_save import lola_state_dict

        return lola_state_dict(self.model)

    def load_state(self) -> dict | None:
        if not self.state_path.is_file():
            return None
        try:
            state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means a damaged file
            raise UserError(f"corrupt training state {self.state_path} ({str(e).splitlines()[0][:120]}): delete it "
                            f"or pass resume=False") from None
        if state.get("version") != STATE_VERSION:
            raise UserError(f"{self.state_path} has an unknown format version: delete it or pass resume=False")
        diff = sorted(k for k, v in self.s.resume_key().items() if state["settings"].get(k) != v)
        if diff:
            raise UserError(f"{self.out} holds a training run with different settings ({', '.join(diff)}): use "
                            f"another out directory or resume=False")
        if state["data"] != self.data.fingerprint():
            raise UserError(f"the training data changed since {self.state_path} was written: use another out "
                            f"directory or resume=False")
        return state

    def restore(self, state: dict):
        with torch.no_grad():
            for n, p in self.params.items():  # stage-1 parameters, saved under the same names
                p.copy_(state["lola"][n])
        self.step, self.tokens_seen, self.position = state["step"], state["tokens_seen"], state["position"]
        self.elapsed, self.history = state["elapsed"], state["history"]
        if self.step >= self.s.stage1_steps and self.s.lora_rank:
            self.setup_stage2()
        if state["stage"] == self.stage:  # else saved right at the stage boundary: stage 2 starts fresh
            if self.stage == 2:
                with torch.no_grad():
                    for n, p in self.params.items():
                        p.copy_(state["params"][n])
            self.opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])

    # -- main loop --
    def train(self, resume: bool, progress, max_steps: int | None) -> bool:
        """Run (or continue) to the end; returns False when stopped early by ``max_steps``."""
        torch.manual_seed(self.s.seed)
        random.seed(self.s.seed)
        state = self.load_state() if resume else None
        if not resume:
            shutil.rmtree(self.out / STATE_DIR, ignore_errors=True)
        self.setup_stage1()
        if state is not None:
            self.restore(state)
        s1, total, bs = self.s.stage1_steps, self.s.total_steps, self.s.batch_size
        t_call, tok_call, done_call = time.perf_counter(), 0, 0
        try:
            while self.step < total:
                if max_steps is not None and done_call >= max_steps:
                    self.save_state()
                    return False
                if self.step >= s1 and self.stage != 2:
                    self.setup_stage2()
                t0 = time.perf_counter()
                batch = self.data.batch(self.position, bs).to(self.device)
                loss = self.stage1_step(batch) if self.stage == 1 else self.stage2_step(batch)
                dt = time.perf_counter() - t0
                self.step += 1
                self.position += bs
                self.tokens_seen += batch.numel()
                self.elapsed += dt
                self.history["loss"].append(loss)
                self.history["seconds"].append(round(dt, 3))
                self._in_step = False
                done_call += 1
                tok_call += batch.numel()
                if progress is not None:
                    progress(self.step, total, self.tokens_seen, loss, tok_call / (time.perf_counter() - t_call))
                if self.step % self.s.checkpoint_every == 0 and self.step < total:
                    self.save_state()
        except KeyboardInterrupt:
            if not self._in_step:  # between steps the state is consistent: keep the work done so far
                self.save_state()
            raise
        self.save_state()
        return True


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
    run = _Run(loaded_model, s, out)
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


# ---- stage 1b: calibrate the linear memory's weight at the target length -----------------------------------------

CALIBRATION_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


def calibrate_linear_weight(loaded_model, data: PackedData, *, sparse: int = 512, sequences: int = 2,
                            tail: float = 0.25, grid=CALIBRATION_GRID, progress=None) -> dict:
    """Pick one global offset for the window factors of the LoLA-patched ``loaded_model`` (its factors are changed
    in place): the offset d in ``grid`` (factors - d, i.e. the linear memory's weight times exp(-d)) that minimizes
    the next-token NLL on the last ``tail`` fraction of ``sequences`` of the packed training sequences ``data``,
    run through LoLA with ``sparse`` cached pairs. Attention transfer fits every position of a sequence equally,
    and most positions are early; this fits the weight where the linear memory is fullest, on training text only.
    The sequences are the last ones of the training order (unseen by a run shorter than one epoch).
    Returns the record stored in the checkpoint's metadata. ``progress(done, total)`` after each forward.
    """
    from dataclasses import replace as dc_replace

    from .patch import lola_modules, new_cache

    model = loaded_model.model
    mods = lola_modules(model)
    if not mods:
        raise UserError("calibration needs a LoLA-patched model")
    for m in mods:
        m.cfg = dc_replace(m.cfg, sparse=sparse)
    seq_len = data.seq_len
    n = min(sequences, data.num_sequences)
    seqs = [data.sequence(data.num_sequences - 1 - i) for i in range(n)]
    start = int(seq_len * (1 - tail))
    base = [m.window_factors.detach().clone() for m in mods]
    dev = next(model.parameters()).device
    curve, done = [], 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for d in grid:
                for m, b in zip(mods, base):
                    m.window_factors.copy_(b - d)
                nll, count = 0.0, 0
                for x in seqs:
                    x = x.view(1, -1).to(dev)
                    logits = model(input_ids=x, past_key_values=new_cache(model), use_cache=True).logits
                    lg = logits[0, start - 1:-1].float()
                    nll += torch.nn.functional.cross_entropy(lg, x[0, start:], reduction="sum").item()
                    count += lg.shape[0]
                    done += 1
                    if progress is not None:
                        progress(done, len(grid) * n)
                curve.append(math.exp(nll / count))
        best = min(range(len(grid)), key=lambda i: (curve[i], grid[i]))
        with torch.no_grad():
            for m, b in zip(mods, base):
                m.window_factors.copy_(b - grid[best])
    finally:
        for m in mods:
            m.cfg = dc_replace(m.cfg, sparse=0)
        model.train(was_training)
    return {"offset": float(grid[best]), "grid": [float(g) for g in grid], "tail_perplexity": curve,
            "criterion": f"next-token perplexity on the last {tail:.0%} of positions", "sparse": sparse,
            "seq_len": seq_len, "sequences": n, "window": mods[0].cfg.window, "sinks": mods[0].cfg.sinks}


# ---- evaluation helper ------------------------------------------------------------------------------------------

def perplexity(model, tokenizer, text_path, *, seq_len: int = 1024, max_tokens: int | None = None,
               progress=None) -> float:
    """Perplexity over non-overlapping ``seq_len`` windows of a text file (batch 1, no padding).

    Works for the plain model and a LoLA-patched one (run in eval mode: the inference path with its sparse
    cache). CRLF is normalized; the first token of every window is context only. ``progress(done, total)``.
    """
    path = Path(text_path)
    if not path.is_file():
        raise UserError(f"perplexity text not found: {text_path}")
    text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise UserError(f"{text_path} has fewer than 2 tokens")
    device = next(model.parameters()).device
    starts = [i for i in range(0, len(ids), seq_len) if len(ids) - i >= 2]
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    try:
        with torch.no_grad():
            for n, i in enumerate(starts, 1):
                x = torch.tensor([ids[i:i + seq_len]], device=device)
                logits = model(input_ids=x, use_cache=False).logits[0, :-1].float()
                nll += F.cross_entropy(logits, x[0, 1:], reduction="sum").item()
                count += x.shape[1] - 1
                if progress is not None:
                    progress(n, len(starts))
    finally:
        model.train(was_training)
    return math.exp(nll / count)
