"""The Python API: load a model with LoLA in one call, run RULER or the commonsense suites into pandas frames.

Settings resolve exactly as on the command line (``runs.resolve_variants``: the checkpoint for the model and
feature map, then explicit arguments > preset > the checkpoint's metadata > defaults), and the checkpoint is
checked against the resulting configuration (``models.compat``) before it is loaded::

    import lola_bench
    lm = lola_bench.load("random:tiny", window=16, lam=32, lola_ckpt="none")
    out = lm.model.generate(lm.tokenizer("Hello", return_tensors="pt").input_ids, max_new_tokens=4)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

from .errors import UserError
from .settings import AttentionSettings, LolaFlags, ModelSettings

log = logging.getLogger("lola_bench")
_FLAG_NAMES = {f.name for f in fields(LolaFlags)} - {"window", "sparse", "preset"}


@dataclass
class Loaded:
    """A model patched for one attention variant. ``model`` works with ``generate()``, plain forward calls and
    lm-eval's ``HFLM(pretrained=model, tokenizer=tokenizer)``."""

    model: object
    tokenizer: object
    attention: AttentionSettings
    checkpoint: str | None
    settings: ModelSettings
    flags: LolaFlags
    kernels: str
    loaded: object                  # models.loading.LoadedModel (what the evaluations take)

    def variants(self, modes) -> list[AttentionSettings]:
        from .runs import resolve_variants

        return resolve_variants(tuple(modes), self.flags, self.settings, self.kernels)[1]


def _flags(window, lam, preset, lola_flags: dict) -> LolaFlags:
    unknown = sorted(set(lola_flags) - _FLAG_NAMES)
    if unknown:
        raise UserError(f"unknown LoLA setting {unknown[0]!r}: choose from window, lam, preset, "
                        f"{', '.join(sorted(_FLAG_NAMES))}")
    return LolaFlags(window=window, sparse=lam, preset=preset, **lola_flags)


def set_threads(threads: int | None) -> None:
    """torch.set_num_threads(threads) (None: leave torch's choice)."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserError(f"--threads must be an integer >= 1, got {threads!r}")
    import torch

    torch.set_num_threads(threads)


def load(model: str = "smollm2-135m", attn: str = "lola", *, window: int | None = None, lam: int | None = None,
         lola_ckpt: str | None = None, preset: str | None = None, device: str = "auto", dtype: str = "auto",
         kernels: str = "auto", threads: int | None = None, **lola_flags) -> Loaded:
    """Load ``model`` (a spec as for ``--model``) and patch it for ``attn`` (full, base, lola or evict).

    ``lola_ckpt``: None = the shipped checkpoint for the embedded model (if the feature map needs one), a path /
    hf:// spec, or "none" to run training-free without a warning. ``lola_flags``: the other LoLA settings
    (scorer, feature_map, combine, sinks, gqa, chunk, seed, evict_at), as the CLI flags of the same names."""
    from .models.aliases import resolve_alias
    from .models.checkpoint import shipped_checkpoint
    from .models.loading import load_model
    from .models.variants import apply_attention
    from .runs import resolve_variants

    set_threads(threads)
    model, note = resolve_alias(model)      # the embedded model's hub id, not cached: the shipped copy
    if note:
        log.warning(note)
    settings = ModelSettings(model, device, dtype, lola_ckpt)
    flags = _flags(window, lam, preset, lola_flags)
    ckpt, (variant,) = resolve_variants((attn,), flags, settings, kernels)
    if attn in ("base", "lola") and ckpt is None and lola_ckpt is None and shipped_checkpoint(model) is not None:
        log.warning(f"running {model} with the training-free feature map {variant.lola.feature_map!r}, without its "
                    f"shipped checkpoint; pass lola_ckpt='none' to say this is intended")
    lm = load_model(model, device, dtype)
    apply_attention(lm.model, variant, ckpt if attn != "full" else None)
    lm.model.eval()
    return Loaded(lm.model, lm.tokenizer, variant, ckpt, settings, flags, kernels, lm)


def _as_loaded(loaded_or_spec, load_kwargs: dict) -> Loaded:
    if isinstance(loaded_or_spec, Loaded):
        if load_kwargs:
            raise UserError(f"{', '.join(load_kwargs)}: settings go to load(), not to an already loaded model")
        return loaded_or_spec
    return load(loaded_or_spec, **load_kwargs)


def run_ruler(loaded_or_spec="smollm2-135m", *, tasks=("niah_single_1",), ctx=(4096,), samples: int = 100,
              attn=("full", "base", "lola"), seed: int = 0, chat_template: bool | None = None,
              essay_path: str | None = None, qa_path: str | None = None, decode_mode: str = "auto",
              prefill_logits: str = "last", **load_kwargs):
    """RULER accuracy, TTFT, decode latency and memory per variant: the summary frame of ``lola-bench ruler``.
    ``loaded_or_spec``: a ``Loaded`` (its settings give the variants) or a model spec (``load_kwargs`` go to
    ``load``). ``decode_mode``, ``prefill_logits``: as ``ruler --decode-mode`` / ``--prefill-logits``. The model is
    left patched as it was loaded."""
    from .evals.ruler.haystack import default_essay_path
    from .evals.ruler_bench import RulerSettings, expand_tasks
    from .evals.ruler_bench import run_ruler as _run
    from .models.variants import apply_attention
    from .provenance import device_label

    lm = _as_loaded(loaded_or_spec, load_kwargs)
    try:
        task_list = tuple(expand_tasks([tasks] if isinstance(tasks, str) else list(tasks)))
    except ValueError as e:
        raise UserError(str(e)) from None
    ctxs = (ctx,) if isinstance(ctx, int) else tuple(ctx)
    rs = RulerSettings(tasks=task_list, ctxs=ctxs, samples=samples, seed=seed,
                       essay_path=default_essay_path(essay_path), qa_path=qa_path, chat_template=chat_template,
                       decode_mode=decode_mode, prefill_logits=prefill_logits)
    modes = (attn,) if isinstance(attn, str) else tuple(attn)
    try:
        out = _run(lm.loaded, lm.variants(modes), rs, ckpt=lm.checkpoint, device_label=device_label(lm.loaded.device))
    finally:
        apply_attention(lm.model, lm.attention, lm.checkpoint if lm.attention.mode != "full" else None)
        lm.model.eval()
    return out.summary


def run_commonsense(loaded_or_spec="smollm2-135m", *, tasks=("piqa", "arc_easy", "arc_challenge", "hellaswag",
                                                            "winogrande"),
                    attn=("full", "base", "lola"), limit: int | None = None, num_fewshot: int | None = None,
                    batch_size: int = 1, data_dir: str | None = None, online: bool = False, **load_kwargs):
    """Commonsense suites through lm-eval per variant: the summary frame of ``lola-bench commonsense``."""
    from .evals.commonsense import resolve_tasks
    from .evals.commonsense.run import CommonsenseSettings, run_commonsense_variants
    from .models.variants import apply_attention
    from .paths import data_dir as find_data
    from .provenance import device_label

    lm = _as_loaded(loaded_or_spec, load_kwargs)
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    ddir = None if online else find_data(data_dir)
    try:
        resolve_tasks(names, str(ddir) if ddir else None)
    except ValueError as e:
        raise UserError(str(e)) from None
    settings = CommonsenseSettings(tuple(names), str(ddir) if ddir else None, limit, num_fewshot, batch_size)
    modes = (attn,) if isinstance(attn, str) else tuple(attn)
    try:
        res = run_commonsense_variants(lm.loaded, lm.variants(modes), settings, ckpt=lm.checkpoint,
                                       device_label=device_label(lm.loaded.device))
    finally:
        apply_attention(lm.model, lm.attention, lm.checkpoint if lm.attention.mode != "full" else None)
        lm.model.eval()
    return res.summary
