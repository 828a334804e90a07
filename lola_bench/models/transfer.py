"""Stage-1 attention transfer and the training loop of a linearization run.

A "teacher" forward runs every LolaAttention as exact causal softmax attention and records its post-RoPE q, k, v
and output (``teacher_mode``); ``attention_transfer_losses`` fits each layer's hybrid attention to that output
(1000 x MSE per layer, backward per layer). ``TrainingRun`` drives both stages step by step (stage 1 feature maps
and window factors, stage 2 LoRA), and saves and restores the resumable train state under ``OUT/train_state/``
(parameters, optimizer, RNG, data position, checked against the settings and the data fingerprint).
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..attention.hybrid import chunked_hybrid_attention, hybrid_attention
from ..data.text_data import PackedData, load_packed
from ..errors import UserError
from ..records import atomic_write_json
from .patch import lola_modules, patch_model

if TYPE_CHECKING:
    from .linearize import LinearizeSettings

MSE_SCALE = 1000.0                           # LoLCATs' mse_factor
STATE_DIR, STATE_FILE = "train_state", "state.pt"
STATE_VERSION = 1


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

class TrainingRun:
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
