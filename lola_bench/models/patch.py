"""Swap a Hugging Face Llama-family model's attention for LoLA, and back.

``patch_model(model, cfg)`` replaces every decoder layer's ``self_attn`` with a LolaAttention that keeps the
original q/k/v/o projections (so LoRA and checkpoints address them by their usual names) and adds
``feature_map_q``, ``feature_map_k`` and ``window_factors``. ``model.generate()`` then creates a LolaCache
by itself. ``unpatch_model`` restores the original modules; ``lola_attention`` is the context manager.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections import Counter

import torch
from torch import nn

from ..attention.chunked import lola_chunked
from ..attention.common import LolaParams
from ..attention.config import LolaConfig
from ..attention.decode import lola_decode
from ..attention.feature_maps import make_feature_map
from ..attention.hybrid import hybrid_attention
from ..attention.pipeline import PIPELINE_NAME, pipeline_runs
from ..attention.scorers import make_scorer
from ..attention.state import LolaState
from ..attention.static_decode import StaticLolaState, static_step
from ..errors import UserError
from .cache import LolaCache

SUPPORTED = ("llama", "mistral", "qwen2")


def kernel_choice(q: torch.Tensor, params: LolaParams, kernels: str) -> str | None:
    """None when the Triton kernels run this call, else what the torch path is named: ``torch``, or ``torch
    (fallback: reason)`` for a configuration the kernels do not cover. ``kernels``: auto (Triton on CUDA when
    available, else torch), torch, or triton (Triton wherever it can run, e.g. TRITON_INTERPRET=1 on CPU)."""
    if kernels == "torch" or (kernels == "auto" and q.device.type != "cuda"):
        return "torch"
    from ..attention.kernels import kernels_available, unsupported_reason

    if kernels == "auto" and not kernels_available():
        return "torch"
    reason = unsupported_reason(q, params)
    return f"torch (fallback: {reason})" if reason else None


def _paths(q: torch.Tensor, params: LolaParams, kernels: str):
    """(prefill, decode, implementation name) for this call (``kernel_choice``); a Triton run with
    ``$LOLA_MERGE=stepwise`` is named ``triton (stepwise merge)`` (plain ``triton``: the persistent merge kernel)."""
    name = kernel_choice(q, params, kernels)
    if name:
        return lola_chunked, lola_decode, name
    from ..attention.kernels import lola_chunked_triton, lola_decode_triton, merge_name

    return lola_chunked_triton, lola_decode_triton, "triton" + merge_name()  # which chunk-boundary merge ran


def _static_path(q: torch.Tensor, params: LolaParams, kernels: str):
    """(step, implementation name) for a StaticLolaState: ``triton (static)`` (the decode kernels reading the lengths
    on the device) where the kernels run (``kernel_choice``), else ``torch (static)`` / ``torch (static; fallback:
    reason)``. The chunk-boundary merge is not part of the step (the driver's ``prepare`` runs it)."""
    name = kernel_choice(q, params, kernels)
    if name == "torch":
        return static_step, "torch (static)"
    if name:                                                        # torch (fallback: reason)
        return static_step, "torch (static; " + name[len("torch ("):]
    from ..attention.kernels import static_step_triton

    return static_step_triton, "triton (static)"


class LolaAttention(nn.Module):
    """Drop-in for LlamaAttention (and Mistral/Qwen2, which share its forward) running LoLA."""

    def __init__(self, base: nn.Module, cfg: LolaConfig, num_heads: int, num_kv_heads: int, rope_fn,
                 kernels: str = "auto"):
        super().__init__()
        self.cfg = cfg
        self.kernels = kernels
        self.layer_idx = base.layer_idx
        self.head_dim = base.head_dim
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = base.q_proj, base.k_proj, base.v_proj, base.o_proj
        self.config = base.config
        self._rope = rope_fn
        self._base = [base]  # hidden from state_dict / modules()
        dev = base.q_proj.weight.device
        self.feature_map_q = make_feature_map(cfg.feature_map, num_heads, self.head_dim).to(dev)
        self.feature_map_k = make_feature_map(cfg.feature_map, num_heads, self.head_dim).to(dev)
        self.window_factors = nn.Parameter(torch.full((num_heads,), float(cfg.factor_init), device=dev))
        self.scorer = make_scorer(cfg.scorer)
        self.calls: Counter = Counter()   # (phase, implementation) -> layer calls: what actually ran

    def params(self) -> LolaParams:
        return LolaParams(self.cfg, self.feature_map_q, self.feature_map_k, self.window_factors, self.scorer,
                          self.num_heads, self.num_kv_heads, self.head_dim)

    def project(self, hidden_states, position_embeddings):
        shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        q = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        k = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        cos, sin = position_embeddings
        q, k = self._rope(q, k, cos, sin)
        return q, k, v

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, cache=None,
                past_key_values=None, **kwargs):
        cache = cache if cache is not None else past_key_values
        q, k, v = self.project(hidden_states, position_embeddings)
        state = cache.state(self.layer_idx) if isinstance(cache, LolaCache) else LolaState()
        if self.training and torch.is_grad_enabled():  # autograd cannot go through the in-place state updates
            if not self.cfg.fold:
                raise UserError("training through eviction attention is not supported (nothing to learn)")
            if self.cfg.sparse:
                raise UserError("training through LoLA attention needs sparse=0 (the dense hybrid path has no "
                                "sparse cache)")
            out = hybrid_attention(q, k, v, self.params())
            self.calls["train", "torch (dense hybrid)"] += 1
        elif isinstance(state, StaticLolaState):  # a StaticLolaCache (static_cache.py): the capturable step only
            step, name = _static_path(q, state.params, self.kernels)
            self.calls["decode", name] += 1
            out = step(q, k, v, state)
        else:
            params = self.params()
            prefill, decode, name = _paths(q, params, self.kernels)
            if q.shape[2] == 1 and state.pos > 0:
                self.calls["decode", name] += 1
                out = decode(q, k, v, state, params)
            else:
                before = pipeline_runs()
                out = prefill(q, k, v, state, params)
                # the torch prefill on CPU may run as the two-thread pipeline: the row says so
                self.calls["prefill", name if pipeline_runs() == before else f"{name} ({PIPELINE_NAME})"] += 1
        out = out.transpose(1, 2).reshape(*hidden_states.shape[:-1], -1).contiguous()
        return self.o_proj(out), None


def _decoder_layers(model):
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise UserError(f"{type(model).__name__} has no decoder layers at .model.layers: not a Llama-family model")
    return inner, layers


def _check_no_padding(module, args, kwargs):
    mask = kwargs.get("attention_mask")
    if mask is None and len(args) > 1:
        mask = args[1]
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and not bool(mask.all()):
        raise UserError("LoLA attention does not support padded batches (attention_mask has zeros): "
                        "run batch size 1 or sequences of equal length")


def patch_model(model, cfg: LolaConfig, kernels: str = "auto"):
    """Replace attention by LoLA in place (idempotent: re-patching first restores the original). ``kernels``: auto,
    torch or triton (see ``_paths``)."""
    model_type = getattr(model.config, "model_type", "")
    if model_type not in SUPPORTED:
        raise UserError(f"LoLA patching supports {', '.join(SUPPORTED)} models, not {model_type!r}")
    if is_patched(model):
        unpatch_model(model)
    inner, layers = _decoder_layers(model)
    rope = importlib.import_module(type(layers[0].self_attn).__module__).apply_rotary_pos_emb
    nh, nkv = model.config.num_attention_heads, model.config.num_key_value_heads
    for layer in layers:
        layer.self_attn = LolaAttention(layer.self_attn, cfg, nh, nkv, rope, kernels)
    model._lola_hook = inner.register_forward_pre_hook(_check_no_padding, with_kwargs=True)
    model._lola_cfg = cfg
    original = model.generate

    @functools.wraps(original)
    def generate(*args, **kwargs):
        if kwargs.get("cache") is None and kwargs.get("past_key_values") is None:
            kwargs["cache"] = LolaCache(len(layers))
        if kwargs.get("num_beams", 1) != 1:
            raise UserError("beam search is not supported with LoLA attention")
        return original(*args, **kwargs)

    model.generate = generate
    model._lola_original_generate = original
    return model


def is_patched(model) -> bool:
    return getattr(model, "_lola_cfg", None) is not None


def unpatch_model(model):
    if not is_patched(model):
        return model
    _, layers = _decoder_layers(model)
    for layer in layers:
        layer.self_attn = layer.self_attn._base[0]
    model._lola_hook.remove()
    model.generate = model._lola_original_generate
    del model._lola_original_generate, model._lola_hook
    model._lola_cfg = None
    return model


def lola_modules(model) -> list[LolaAttention]:
    _, layers = _decoder_layers(model)
    return [layer.self_attn for layer in layers if isinstance(layer.self_attn, LolaAttention)]


def reset_calls(model) -> None:
    for m in lola_modules(model):
        m.calls.clear()


def implementation_used(model) -> str | None:
    """What computed LoLA attention since the last ``reset_calls`` (prefill and decode, all layers): e.g. ``torch``,
    ``triton``, or ``prefill: triton; decode: torch (fallback: ...)``. None if no LoLA layer ran."""
    by_phase: dict[str, set] = {}
    for m in lola_modules(model):
        for (phase, name), n in m.calls.items():
            if n:
                by_phase.setdefault(phase, set()).add(name)
    if not by_phase:
        return None
    names = {phase: " + ".join(sorted(v)) for phase, v in by_phase.items()}
    if len(set(names.values())) == 1:
        return next(iter(names.values()))
    return "; ".join(f"{phase}: {names[phase]}" for phase in sorted(names))


def new_cache(model) -> LolaCache:
    _, layers = _decoder_layers(model)
    return LolaCache(len(layers))


@contextlib.contextmanager
def lola_attention(model, cfg: LolaConfig):
    """``with lola_attention(model, cfg): model.generate(...)`` — LoLA inside, original attention after."""
    patch_model(model, cfg)
    try:
        yield model
    finally:
        unpatch_model(model)
