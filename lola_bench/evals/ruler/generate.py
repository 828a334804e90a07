"""Offline RULER sample generation with exact length fitting.

Each sample draws all its random choices first (keys, values, needle depths, shuffles) from
``random.Random(sha256(seed, task, ctx, index))``, which makes a function ``units -> prompt`` of the
haystack size alone. The largest haystack whose tokenized prompt leaves ``max_new_tokens`` free in
``ctx`` is then found by interpolation/bisection search over ``units`` (noise sentences, essay words,
distractor needles, words, documents...), so prompts end within one haystack unit of the budget and
never over it. The per-task random choices (drafts) are ``drafts.py``; this module fits them to ``ctx`` and
assembles the prompt.

Prompt = input text + answer prefix (RULER appends its answer prefix to the input). With
``chat_template=True`` the input text becomes the user turn of ``tokenizer.apply_chat_template(...,
add_generation_prompt=True)`` and the answer prefix (leading whitespace stripped) follows the
generation prompt. ``input_ids`` are the tokens of that final string, encoded with
``add_special_tokens=not chat_template`` (a rendered chat template already carries its special tokens).
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable
from dataclasses import dataclass

from .drafts import make_draft
from .tasks import get_task, task_unavailable_reason


@dataclass(frozen=True)
class RulerSample:
    """One generated prompt with its references. ``depth`` is in percent (nan when meaningless)."""

    task: str
    ctx: int
    index: int
    seed: int
    depth: float
    prompt: str
    input_ids: tuple[int, ...]
    answers: tuple[str, ...]
    max_new_tokens: int
    n_prompt_tokens: int
    chat_template: bool


class _DoesNotFit(Exception):
    def __init__(self, tokens: int):
        self.tokens = tokens


def sample_rng(seed: int, task: str, ctx: int, index: int) -> random.Random:
    """The sample's RNG, seeded from a stable hash (not Python's salted ``hash``)."""
    digest = hashlib.sha256(f"lola-bench-ruler|{seed}|{task}|{ctx}|{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:16], "big"))


def sample_depths(n: int) -> list[float]:
    """Evenly spaced needle depths in percent: linspace(0, 100, n); a single sample sits at 50."""
    if n == 1:
        return [50.0]
    return [100.0 * i / (n - 1) for i in range(n)]


# ----------------------------------------------------------------------------------------- length fitting


class _Prompter:
    """Turns (input text, answer prefix) into the model's prompt string and token ids."""

    def __init__(self, tokenizer, chat_template: bool):
        if chat_template and not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat_template=True but the tokenizer has no chat template")
        self.tokenizer, self.chat = tokenizer, chat_template

    def prompt(self, input_text: str, answer_prefix: str) -> str:
        if not self.chat:
            return input_text + answer_prefix
        head = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": input_text}], tokenize=False, add_generation_prompt=True
        )
        return head + answer_prefix.lstrip()

    def encode(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt, add_special_tokens=not self.chat, verbose=False)["input_ids"])


def _fit(count: Callable[[int], int], budget: int, lo: int, hi: int, hint: int | None = None) -> int:
    """Largest u in [lo, hi] with count(u) <= budget, for a count that grows (roughly) with u.

    Interpolation search, falling back to bisection; only feasible sizes are ever returned.
    Raises _DoesNotFit when even ``lo`` is over budget.
    """
    c_lo = count(lo)
    if c_lo > budget:
        raise _DoesNotFit(c_lo)
    a, ca = lo, c_lo  # largest known feasible
    b, cb = None, None  # smallest known infeasible
    probe = hint if hint is not None and lo < hint <= hi else min(hi, lo + 8)
    for it in range(80):
        if a >= hi or (b is not None and b - a <= 1):
            break
        upper = hi if b is None else b - 1
        if probe is None:
            if b is None:
                rate = max((ca - c_lo) / (a - lo), 1e-3) if a > lo else 1.0
                probe = a + int((budget - ca) / rate) if it < 30 else 2 * a - lo + 1
            elif it < 20:
                probe = a + int((budget - ca) * (b - a) / max(cb - ca, 1))
            else:
                probe = (a + b) // 2
        probe = min(max(probe, a + 1), upper)
        c = count(probe)
        if c <= budget:
            a, ca = probe, c
        else:
            b, cb = probe, c
        probe = None
    return a


def generate_samples(
    task: str,
    tokenizer,
    ctx: int,
    n: int,
    seed: int,
    *,
    essay_path: str | os.PathLike | None = None,
    qa_path: str | os.PathLike | None = None,
    chat_template: bool = False,
) -> list[RulerSample]:
    """``n`` samples of ``task`` whose prompt plus ``max_new_tokens`` fits ``ctx`` tokens as tightly as possible.

    Deterministic in (seed, task, ctx, index) for a given tokenizer and data. Needle depths are evenly
    spaced over the samples (see ``sample_depths``). Raises ValueError for an unknown task, ``n < 1``,
    missing data, or a ``ctx`` too small for the template, one haystack unit and the answer.
    """
    spec = get_task(task)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if isinstance(ctx, bool) or not isinstance(ctx, int) or ctx < 1:
        raise ValueError(f"ctx must be a positive integer, got {ctx!r}")
    reason = task_unavailable_reason(task, essay_path=essay_path, qa_path=qa_path)
    if reason:
        raise ValueError(reason)
    budget = ctx - spec.max_new_tokens
    if budget < 1:
        raise ValueError(
            f"ctx={ctx} is too small for {task}: {spec.max_new_tokens} tokens are reserved for generation"
        )

    prompter = _Prompter(tokenizer, chat_template)
    samples: list[RulerSample] = []
    hint: int | None = None
    for index, depth in enumerate(sample_depths(n)):
        rng = sample_rng(seed, task, ctx, index)
        for _attempt in range(20):
            draft = make_draft(spec, rng, depth, ctx, essay_path, qa_path)
            cache: dict[int, int] = {}

            def count(k: int, draft=draft, cache=cache) -> int:
                if k not in cache:
                    cache[k] = len(prompter.encode(prompter.prompt(*draft.render(k * draft.step))))
                return cache[k]

            lo, hi = (
                draft.min_units // draft.step,
                max(draft.max_units // draft.step, draft.min_units // draft.step),
            )
            try:
                k = _fit(count, budget, lo, hi, None if hint is None else hint // draft.step)
            except _DoesNotFit as e:
                raise ValueError(
                    f"ctx={ctx} is too small for {task}: the smallest prompt is {e.tokens} tokens and "
                    f"{spec.max_new_tokens} more are reserved for generation"
                ) from None
            units = k * draft.step
            prompt = prompter.prompt(*draft.render(units))
            if all(prompt.count(s) == 1 for s in draft.unique):
                break
            # A value also occurs in the haystack text (e.g. a number inside an essay): draw again.
        else:
            raise RuntimeError(f"{task}: could not place unique needles after 20 draws (index {index})")
        hint = units
        ids = tuple(prompter.encode(prompt))
        if len(ids) + spec.max_new_tokens > ctx:  # guarded by _fit; kept as a hard invariant
            raise RuntimeError(f"{task}: prompt of {len(ids)} tokens does not fit ctx={ctx}")
        samples.append(
            RulerSample(
                task=task,
                ctx=ctx,
                index=index,
                seed=seed,
                depth=float(draft.depth(units)),
                prompt=prompt,
                input_ids=ids,
                answers=tuple(str(a) for a in draft.answers),
                max_new_tokens=spec.max_new_tokens,
                n_prompt_tokens=len(ids),
                chat_template=chat_template,
            )
        )
    return samples
