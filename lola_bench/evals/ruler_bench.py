"""Run RULER samples through one model under several attention variants: accuracy, TTFT, decode, memory."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import pandas as pd

from ..attention.state import full_kv_bytes
from ..diagnostics import NEEDLE_KINDS, NeedleProbe, needle_kept_share
from ..diagnostics.oracle import PIN_SUFFIX
from ..distributed import world
from ..errors import UserError
from ..models.checkpoint import checkpoint_label
from ..models.variants import attention_variant
from ..records import to_jsonable
from ..settings import AttentionSettings, implementation_columns, variant_columns
from ..stats import wilson_interval
from .graphed_generate import graphed_generate
from .ruler import RULER_TASKS, TASKS, generate_samples, score_sample, task_unavailable_reason
from .timing import DECODE_MODES, PREFILL_LOGITS, eos_token_ids, graphed_decode_on, greedy_generate

MIB = 1024 * 1024

SUMMARY_COLUMNS = ["model", "attn", "window", "lambda", "sinks", "scorer", "feature_map", "evict_at", "task", "ctx",
                   "n", "accuracy", "accuracy_ci_low", "accuracy_ci_high",
                   "ttft_s", "decode_ms_per_token", "peak_mem_mib", "cache_mib", "full_kv_mib", "window_mib",
                   "sparse_mib", "state_mib", "phi_k_mib", "mean_prompt_tokens", "combine", "gqa", "chunk",
                   "settings_from", "implementation", "decode_impl", "prefill_logits", "threads", "checkpoint",
                   "device", "chat_template", "needle_kept"]


@dataclass(frozen=True)
class RulerSettings:
    tasks: tuple[str, ...]
    ctxs: tuple[int, ...]
    samples: int
    seed: int = 0
    essay_path: str | None = None
    qa_path: str | None = None
    chat_template: bool | None = None   # None = automatic (instruct models)
    warmup: bool = True
    diagnostics: bool = True            # needle diagnostics columns for LoLA variants on needle tasks (diagnostics/)
    pin_needle: bool = False            # oracle ablation: needle tokens kept exact in every layer (diagnostics/oracle)
    decode_mode: str = "auto"           # auto | graphed | eager: how decode steps run (evals/graphed_generate.py)
    prefill_logits: str = "last"        # last | all: the prefill's output head on the last prompt position or on all

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class RulerOutput:
    summary: pd.DataFrame
    predictions: list[dict] = field(default_factory=list)
    chat_template: bool = False
    reused: list[tuple[str, str, int]] = field(default_factory=list)   # (variant, task, ctx) cells resumed


def expand_tasks(tasks: list[str], essay_path: str | None = None, qa_path: str | None = None,
                 skipped: dict | None = None) -> list[str]:
    """Task names, checked; ``all`` is every RULER task whose data is present here (with ``skipped`` given, the
    others go into it as task -> reason, for the caller to list)."""
    if "all" in tasks:
        out = []
        for t in RULER_TASKS:
            reason = task_unavailable_reason(t, essay_path=essay_path, qa_path=qa_path)
            if reason is None:
                out.append(t)
            elif skipped is not None:
                skipped[t] = reason
        if not out:
            raise UserError("--task all: no RULER task has its data here (" + "; ".join(
                f"{t}: {r}" for t, r in (skipped or {}).items()) + ")")
        return out
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UserError(f"unknown task {unknown[0]!r}: choose from {', '.join(TASKS)} or all")
    return list(dict.fromkeys(tasks))


def validate(settings: RulerSettings, max_context: int) -> None:
    """Everything that can be checked before any model work (so a bad flag leaves no run directory)."""
    if settings.samples < 1:
        raise UserError(f"--samples must be >= 1, got {settings.samples}")
    if settings.prefill_logits not in PREFILL_LOGITS:
        raise UserError(f"unknown --prefill-logits {settings.prefill_logits!r}: choose {' or '.join(PREFILL_LOGITS)}")
    if settings.decode_mode not in DECODE_MODES:
        raise UserError(f"unknown --decode-mode {settings.decode_mode!r}: choose {', '.join(DECODE_MODES)}")
    for ctx in settings.ctxs:
        if ctx < 256:
            raise UserError(f"--ctx {ctx} is too short for RULER prompts (minimum 256)")
        if max_context and ctx > max_context:
            raise UserError(f"--ctx {ctx} exceeds the model's maximum context of {max_context} tokens")
    for task in settings.tasks:
        reason = task_unavailable_reason(task, essay_path=settings.essay_path, qa_path=settings.qa_path)
        if reason:
            raise UserError(f"task {task} unavailable: {reason}")
    if settings.pin_needle and not any(TASKS[t].kind in NEEDLE_KINDS for t in settings.tasks):
        raise UserError("--pin-needle keeps a needle exact: it needs a needle task (niah_*, passkey), got "
                        + ", ".join(settings.tasks))


def _raise_bad_pairs(bad: list[tuple[str, int, str]]) -> None:
    """One line naming every (task, ctx) pair whose prompt cannot be built (too short a context, mostly)."""
    if bad:
        listed = "; ".join(f"{t} at {c} ({e.split(': ', 1)[-1] if 'too small' in e else e})" for t, c, e in bad)
        raise UserError(f"{len(bad)} (task, ctx) pair(s) cannot run: {listed}; raise --ctx or drop those tasks")


def check_pairs(settings: RulerSettings, tokenizer, chat_template: bool) -> None:
    """Every (task, ctx) pair builds a prompt (one sample each, tokenizer only), before the model loads: a
    UserError listing all the pairs that do not."""
    bad = []
    for task in settings.tasks:
        for ctx in settings.ctxs:
            try:
                generate_samples(task, tokenizer, ctx, 1, settings.seed, essay_path=settings.essay_path,
                                 qa_path=settings.qa_path, chat_template=chat_template)
            except ValueError as e:
                bad.append((task, ctx, str(e)))
    _raise_bad_pairs(bad)


def run_ruler(loaded, variants: list[AttentionSettings], settings: RulerSettings, *, ckpt: str | None = None,
              device_label: str = "cpu", progress=None, store=None, resume_key: dict | None = None) -> RulerOutput:
    """Generate the samples once, then run every variant over them. ``progress(advance, description)``.

    ``store`` (a records.ResumeStore): every finished (variant, task, ctx) cell (its summary row and predictions)
    is saved there as soon as it finishes, under ``resume_key`` (the settings that decide the result) + the
    variant, task, context, sample count and seed; a cell found there with the same key is reused, not rerun.

    Under ``accelerate launch`` (distributed.world()), every process runs its share of each cell's samples and
    the per-sample results are gathered on every rank before the cell's row is computed, so every rank returns
    the same output (predictions carry the ``rank`` that ran them) and only rank 0 saves to ``store``."""
    validate(settings, loaded.max_context)
    tok, model = loaded.tokenizer, loaded.model
    chat = loaded.is_instruct if settings.chat_template is None else settings.chat_template
    samples, bad = {}, []
    for task in settings.tasks:
        for ctx in settings.ctxs:
            try:
                samples[task, ctx] = generate_samples(task, tok, ctx, settings.samples, settings.seed,
                                                      essay_path=settings.essay_path, qa_path=settings.qa_path,
                                                      chat_template=chat)
            except ValueError as e:
                bad.append((task, ctx, str(e)))
    _raise_bad_pairs(bad)
    eos = eos_token_ids(model, tok)
    graphed = graphed_decode_on(settings.decode_mode, loaded.device)
    rows, preds, reused = [], [], []
    for attn in variants:
        def key(task, ctx, _attn=attn):
            return {**(resume_key or {}), "attention": _attn.to_dict(), "task": task, "ctx": ctx,
                    "samples": settings.samples, "seed": settings.seed, "chat_template": chat,
                    **({"decode": "graphed"} if graphed else {}),     # eager cells keep their keys
                    **({"prefill_logits": "last"} if settings.prefill_logits == "last" else {}),   # "all" cells too
                    # only where they add columns (LoLA layers, a needle task): other cells resume either way
                    **({"diagnostics": True} if settings.diagnostics and _attn.lola is not None
                       and TASKS[task].kind in NEEDLE_KINDS else {}),
                    **({"pin_needle": True} if _pinned(settings, _attn, task) else {})}

        done = {}
        if store is not None:
            for cell in samples:
                rec = store.load(_cell_name(attn, *cell), key(*cell))
                if rec is not None:
                    done[cell] = rec
        done = world().broadcast(done)          # every rank resumes the cells rank 0 found
        todo = {cell: items for cell, items in samples.items() if cell not in done}
        reused += [(attn.mode, t, c) for t, c in done]
        if progress and done:
            progress(sum(len(samples[c]) for c in done), None)

        def finished(task, ctx, row, cell_preds, _attn=attn, _key=key):
            if store is not None and world().is_main:
                store.save(_cell_name(_attn, task, ctx), _key(task, ctx), {"row": row, "predictions": cell_preds})

        new = {}
        if todo:
            with attention_variant(model, attn, ckpt) as used:
                new = _run_variant(loaded, attn, todo, settings, eos, device_label, progress, used, chat, finished,
                                   ckpt, graphed)
        for cell in samples:                     # the cells in plan order, resumed or new
            rec = done.get(cell) or new[cell]
            rows.append(rec["row"])
            preds += rec["predictions"]
    return RulerOutput(summary=pd.DataFrame(rows, columns=SUMMARY_COLUMNS), predictions=preds, chat_template=chat,
                       reused=reused)


def describe_variants(variants: list[AttentionSettings]) -> list[str]:
    """One line per variant for a run plan (ruler --dry-run): its mode and the settings that decide its result."""
    return [f"{v.mode}: " + (f"window={v.lola.window} lambda={v.lola.sparse} sinks={v.lola.sinks} "
                             f"combine={v.lola.combine} feature_map={v.lola.feature_map}" if v.lola else "softmax")
            + (f" scorer={v.lola.scorer} evict_at={v.lola.evict_at}" if v.mode == "evict" else "")
            for v in variants]


def _pinned(settings: RulerSettings, attn: AttentionSettings, task: str) -> bool:
    """Whether this cell runs with the needle oracle (``--pin-needle``: LoLA layers, a needle task)."""
    return settings.pin_needle and attn.lola is not None and TASKS[task].kind in NEEDLE_KINDS


def _cell_name(attn: AttentionSettings, task: str, ctx: int) -> str:
    return f"ruler-{attn.mode}-{task}-{ctx}"


def _run_variant(loaded, attn: AttentionSettings, samples: dict, settings: RulerSettings, eos, device_label: str,
                 progress, used, chat: bool = False, finished=None, ckpt: str | None = None,
                 graphed: bool = False) -> dict:
    """Every sample of every (task, ctx) under one attention variant: {(task, ctx): {"row", "predictions"}};
    ``finished(task, ctx, row, predictions)`` is called as each cell finishes. ``graphed``: decode on a static cache,
    captured and replayed on CUDA (``graphed_generate``), else one forward per token (``greedy_generate``)."""
    import torch

    def generate(ids, n, pin=False):
        if not graphed:
            return greedy_generate(model, ids, n, eos, loaded.device, settings.prefill_logits)
        return graphed_generate(model, ids, n, eos, loaded.device, logits=settings.prefill_logits,
                                no_static="--pin-needle pins the eager merge" if pin else None)

    model, tok, cfg = loaded.model, loaded.tokenizer, loaded.model.config
    w = world()
    cells = {}
    if settings.warmup:  # one short untimed generation: allocator, threads, lazy init
        first = next(iter(samples.values()))[0]
        warm_len = min(len(first.input_ids), 2 * (attn.lola.chunk_size if attn.lola else 64) + 8)
        generate(torch.tensor([first.input_ids[:warm_len]]), 2 + 2 * graphed)
    for (task, ctx), items in samples.items():
        local = []
        for s in w.shard(items):                # all of them in a single process
            if progress:
                progress(0, f"{attn.mode} {task} ctx={ctx} #{s.index + 1}/{len(items)}")
            pin = _pinned(settings, attn, task)
            with NeedleProbe(model, tok, s, TASKS[task].kind, enabled=settings.diagnostics, pin=pin) as probe:
                r = generate(torch.tensor([s.input_ids]), s.max_new_tokens, pin)
            r.ttft_s -= probe.seconds    # the diagnostics ran inside the prefill (in its layer hooks): not TTFT
            text = tok.decode(r.tokens, skip_special_tokens=True)
            score = score_sample(task, text, s.answers)
            pred = {**variant_columns(attn), "task": task, "ctx": ctx, "index": s.index, "depth": s.depth,
                    "seed": s.seed, "n_prompt_tokens": s.n_prompt_tokens, "n_generated": len(r.tokens),
                    "answer": list(s.answers), "prediction": text, "score": score,
                    "ttft_s": r.ttft_s, "decode_s_per_token": r.decode_s_per_token,
                    **({"decode_impl": r.decode_impl, "decode_setup_s": r.decode_setup_s} if graphed else {}),
                    **probe.columns()}
            if pin:
                pred["scorer"] = f"{pred['scorer']}{PIN_SUFFIX}"
                pred["needle_pinned"] = probe.pinned
            if w.parallel:
                pred["rank"] = w.rank
            local.append((s.index, r, score, pred))
            if progress and not w.parallel:
                progress(1, None)
        by_index = {s.index: s for s in items}
        gathered = w.gather_shards(local)       # every sample of the cell, in sample order
        if progress and w.parallel:
            progress(len(items), None)
        results = [(by_index[i], r, score) for i, r, score, _ in gathered]
        preds = [pred for *_, pred in gathered]
        tiers = [r.cache_bytes for _, r, _ in results]
        total_len = [s.n_prompt_tokens + len(r.tokens) for s, r, _ in results]
        dec = [r.decode_s_per_token for _, r, _ in results if r.decode_s_per_token is not None]
        full_kv = statistics.mean(full_kv_bytes(n, batch=1, kv_heads=cfg.num_key_value_heads,
                                                head_dim=getattr(cfg, "head_dim", None) or
                                                cfg.hidden_size // cfg.num_attention_heads,
                                                dtype=model.dtype, layers=cfg.num_hidden_layers)
                                  for n in total_len)

        def tier(name, tiers=tiers):
            return statistics.mean(t.get(name, 0) for t in tiers) / MIB

        cache = statistics.mean(sum(t.values()) for t in tiers) / MIB
        accuracy = statistics.mean(sc for _, _, sc in results)
        low, high = wilson_interval(accuracy / 100 * len(results), len(results))
        cols = variant_columns(attn)
        if _pinned(settings, attn, task):
            cols["scorer"] = f"{cols['scorer']}{PIN_SUFFIX}"
        row = to_jsonable({"model": loaded.spec, **cols, "task": task, "ctx": ctx, "n": len(results),
                     "accuracy": accuracy, "accuracy_ci_low": 100 * low, "accuracy_ci_high": 100 * high,
                     "ttft_s": statistics.median(r.ttft_s for _, r, _ in results),
                     "decode_ms_per_token": statistics.median(dec) * 1000 if dec else float("nan"),
                     "peak_mem_mib": max(r.peak_mem_bytes for _, r, _ in results) / MIB,
                     "cache_mib": cache, "full_kv_mib": full_kv / MIB, "window_mib": tier("window"),
                     "sparse_mib": tier("sparse"), "state_mib": tier("state"), "phi_k_mib": tier("phi_k"),
                     "mean_prompt_tokens": statistics.mean(s.n_prompt_tokens for s, _, _ in results),
                     **implementation_columns(attn, used()),
                     "prefill_logits": "last position" if settings.prefill_logits == "last" else "every position",
                     "decode_impl": "; ".join(sorted({r.decode_impl for _, r, _ in results if r.decode_impl})) or None,
                     "checkpoint": checkpoint_label(ckpt) if attn.lola and attn.lola.fold else None,   # eviction: none
                     "device": device_label,
                     "chat_template": bool(chat), "needle_kept": needle_kept_share(preds)})
        preds = to_jsonable(preds)
        cells[task, ctx] = {"row": row, "predictions": preds}
        if finished:
            finished(task, ctx, row, preds)
    return cells
