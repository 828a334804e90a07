"""Offline RULER sample generation with exact length fitting.

Each sample draws all its random choices first (keys, values, needle depths, shuffles) from
``random.Random(sha256(seed, task, ctx, index))``, which makes a function ``units -> prompt`` of the
haystack size alone. The largest haystack whose tokenized prompt leaves ``max_new_tokens`` free in
``ctx`` is then found by interpolation/bisection search over ``units`` (noise sentences, essay words,
distractor needles, words, documents...), so prompts end within one haystack unit of the budget and
never over it.

Prompt = input text + answer prefix (RULER appends its answer prefix to the input). With
``chat_template=True`` the input text becomes the user turn of ``tokenizer.apply_chat_template(...,
add_generation_prompt=True)`` and the answer prefix (leading whitespace stripped) follows the
generation prompt. ``input_ids`` are the tokens of that final string, encoded with
``add_special_tokens=not chat_template`` (a rendered chat template already carries its special tokens).
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .haystack import (
    NOISE,
    NOISE_SENTENCES,
    EssayHaystack,
    common_words,
    insert_at_depths,
    key_word_parts,
    load_essay,
    load_qa,
    noise_lines,
    noise_sentences,
)
from .tasks import (
    CWE_ANSWER_PREFIX,
    CWE_TEMPLATE,
    DEPTH_GRID,
    FWE_ANSWER_PREFIX,
    FWE_TEMPLATE,
    LMEVAL_GEN_PREFIX,
    NEEDLE,
    NIAH_TEMPLATE,
    PASSKEY_ANSWER_PREFIX,
    PASSKEY_INFO,
    PASSKEY_QUESTION,
    PASSKEY_TASK,
    QA_ANSWER_PREFIX,
    QA_DOCUMENT,
    QA_TEMPLATE,
    VT_ANSWER_PREFIX,
    VT_TEMPLATE,
    TaskSpec,
    _singular,
    get_task,
    niah_prompt,
    task_unavailable_reason,
)

# RULER parameters (scripts/synthetic.yaml and the synthetic/*.py defaults).
VT_NUM_CHAINS, VT_NUM_HOPS = 1, 4
VT_ICL_NOISE_LINES = 10  # RULER sizes its 1-shot example to <= 500 tokens in steps of 5 noise paragraphs
CWE_NUM_CW, CWE_FREQ_CW, CWE_FREQ_UCW = 10, 30, 3
FWE_ALPHA, FWE_CODED_WORDLEN = 2.0, 6
LMEVAL_STEP_LONG, LMEVAL_STEP_SHORT = 25, 5  # lm-eval's haystack increments (ctx >= 4096 / below)


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


@dataclass
class _Draft:
    """The random choices of one sample; ``render(units)`` gives (input text, answer prefix)."""

    render: Callable[[int], tuple[str, str]]
    answers: tuple[str, ...]
    min_units: int
    max_units: int
    depth: Callable[[int], float]
    unique: tuple[str, ...] = ()  # strings that must occur exactly once in the prompt
    step: int = 1  # haystack sizes are multiples of this (lm-eval port only)


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


# ------------------------------------------------------------------------------------------ random values


def _random_value(rng: random.Random, kind: str) -> str:
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    if kind == "words":
        adjs, nouns = key_word_parts()
        return f"{rng.choice(adjs)}-{rng.choice(nouns)}"
    raise ValueError(f"unknown needle type {kind!r}")


class _Fresh:
    """Draws values never drawn before (keys and values of one sample stay distinct)."""

    def __init__(self, rng: random.Random, used: set[str] | None = None):
        self.rng, self.used = rng, set() if used is None else used

    def __call__(self, kind: str) -> str:
        while True:
            v = _random_value(self.rng, kind)
            if v not in self.used:
                self.used.add(v)
                return v


class _Stream:
    """A lazily extended, deterministic list: item i depends only on the seed, not on how far we looked."""

    def __init__(self, make: Callable[[], Any]):
        self._make, self._items = make, []

    def take(self, n: int) -> list:
        while len(self._items) < n:
            item = self._make()
            if item is None:  # exhausted
                break
            self._items.append(item)
        return self._items[:n]


# ------------------------------------------------------------------------------------------------ drafts


def _draft_niah(
    spec: TaskSpec, rng: random.Random, depth: float, ctx: int, essay: EssayHaystack | None
) -> _Draft:
    fresh = _Fresh(rng)
    keys = [fresh(spec.key_type) for _ in range(spec.num_keys)]
    values = [[fresh(spec.value_type) for _ in range(spec.num_values)] for _ in keys]
    asked = rng.sample(range(spec.num_keys), spec.num_queries)
    queries = [keys[i] for i in asked]
    answers = tuple(v for i in asked for v in values[i])
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]

    # The first asked value sits at this sample's depth, the other needles at distinct RULER grid depths.
    primary = (asked[0], 0)
    n_needles = spec.num_keys * spec.num_values
    others = iter(rng.sample([d for d in DEPTH_GRID if d != round(depth)], n_needles - 1))
    needles = [
        (
            depth if (k, j) == primary else float(next(others)),
            NEEDLE.format(type_needle_v=spec.value_type, key=keys[k], value=values[k][j]),
        )
        for k in range(spec.num_keys)
        for j in range(spec.num_values)
    ]

    if spec.haystack == "noise":

        def context(units: int) -> str:
            return "\n".join(insert_at_depths(noise_lines(units), needles))

        max_units = 2 * ctx + 16
    elif spec.haystack == "essay":

        def context(units: int) -> str:
            return essay.context(units, needles)

        max_units = 4 * ctx + 16
    elif spec.haystack == "needle":
        hay_fresh = _Fresh(random.Random(rng.getrandbits(64)), used=set(fresh.used))
        distractors = _Stream(
            lambda: NEEDLE.format(
                type_needle_v=spec.value_type, key=hay_fresh(spec.key_type), value=hay_fresh(spec.value_type)
            )
        )

        def context(units: int) -> str:
            return "\n".join(insert_at_depths(distractors.take(units), needles))

        max_units = ctx + 16
    else:
        raise ValueError(f"unknown haystack {spec.haystack!r}")

    return _Draft(
        render=lambda u: niah_prompt(spec, context(u), query),
        answers=answers,
        min_units=1,
        max_units=max_units,
        depth=lambda u: depth,
        unique=answers,
    )


def _draft_niah_lmeval(spec: TaskSpec, rng: random.Random, depth: float, ctx: int) -> _Draft:
    """lm-eval's niah_single_1: whole noise paragraphs joined by newlines, sized in steps of 25 (5 < 4096)."""
    fresh = _Fresh(rng)
    key, value = fresh(spec.key_type), fresh(spec.value_type)
    needle = NEEDLE.format(type_needle_v=spec.value_type, key=key, value=value)
    type_v = spec.value_type[:-1]
    template = _singular(NIAH_TEMPLATE)
    prefix = " " + LMEVAL_GEN_PREFIX.format(type_needle_v=type_v, query=key)

    def render(units: int) -> tuple[str, str]:
        lines = insert_at_depths([NOISE] * units, [(depth, needle)])
        return template.format(type_needle_v=type_v, context="\n".join(lines), query=key), prefix

    step = LMEVAL_STEP_LONG if ctx >= 4096 else LMEVAL_STEP_SHORT
    return _Draft(render, (value,), step, ctx + step, lambda u: depth, unique=(value,), step=step)


def _draft_passkey(rng: random.Random, depth: float, ctx: int) -> _Draft:
    """Landmark-attention passkey prompt; the key is a random 5-digit number (10000..99999)."""
    key = str(rng.randint(10000, 99999))
    info = PASSKEY_INFO.format(key=key)

    def render(units: int) -> tuple[str, str]:
        sents = noise_sentences(units)
        cut = int(units * depth / 100)
        text = "\n".join([PASSKEY_TASK, " ".join(sents[:cut]), info, " ".join(sents[cut:]), PASSKEY_QUESTION])
        return text, PASSKEY_ANSWER_PREFIX

    return _Draft(render, (key,), 1, 2 * ctx + 16, lambda u: depth)


def _vt_chain(rng: random.Random, name_len: int, num_hops: int) -> tuple[list[str], list[str], str]:
    """(variable names, assignment statements, value) of one chain, as RULER's generate_chains."""
    names: list[str] = []
    while len(names) < num_hops + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=name_len))
        if name not in names:
            names.append(name)
    value = str(rng.randint(10000, 99998))
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(num_hops)]
    return names, chain, value


def _vt_input(units_sentences: int, chain: list[str], fracs: list[float], value: str) -> str:
    """RULER's variable-tracking text: noise paragraphs ending in newlines, chain statements spliced in."""
    lines = [line + "\n" for line in noise_lines(units_sentences)]
    items = insert_at_depths(lines, [(100.0 * f, stmt) for f, stmt in zip(fracs, chain)])
    context = " ".join(items).replace(". \n", ".\n")
    return VT_TEMPLATE.format(context=context, query=value)


def _draft_vt(rng: random.Random, ctx: int) -> _Draft:
    # 1-shot example (3-letter names), as RULER prepends to every vt prompt.
    icl_names, icl_chain, icl_value = _vt_chain(rng, 3, VT_NUM_HOPS)
    icl_fracs = sorted(rng.random() for _ in icl_chain)
    icl = (
        _vt_input(VT_ICL_NOISE_LINES * len(NOISE_SENTENCES), icl_chain, icl_fracs, icl_value)
        + VT_ANSWER_PREFIX.format(num_v=VT_NUM_HOPS + 1, query=icl_value)
        + " "
        + " ".join(icl_names)
        + "\n\n"
    )
    names, chain, value = _vt_chain(rng, 5, VT_NUM_HOPS)
    fracs = sorted(rng.random() for _ in chain)
    prefix = VT_ANSWER_PREFIX.format(num_v=VT_NUM_HOPS + 1, query=value)

    def render(units: int) -> tuple[str, str]:
        return icl + "\n\n" + _vt_input(units, chain, fracs, value), prefix

    def depth(units: int) -> float:
        n_lines = len(noise_lines(units))
        return 100.0 * int(n_lines * fracs[0]) / max(n_lines, 1)

    return _Draft(render, tuple(names), 1, 2 * ctx + 16, depth)


def _numbered(words: list[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


def _draft_cwe(rng: random.Random, ctx: int) -> _Draft:
    pool = common_words()
    if ctx < 4096:  # RULER's short-context setting: example (20 words, 3/1 repeats), main list 6/1 repeats
        ex_n, ex_cw, ex_ucw, freq_cw, freq_ucw = 20, 3, 1, 6, 1
    else:
        ex_n, ex_cw, ex_ucw, freq_cw, freq_ucw = 40, 10, 3, CWE_FREQ_CW, CWE_FREQ_UCW

    def word_list(words: list[str], cw: int, ucw: int, shuffle_seed: int) -> list[str]:
        common, uncommon = words[:CWE_NUM_CW], words[CWE_NUM_CW:]
        out = common * cw + uncommon * ucw
        random.Random(shuffle_seed).shuffle(out)
        return out

    ex_words = rng.sample(pool, ex_n)
    example = (
        CWE_TEMPLATE.format(context=_numbered(word_list(ex_words, ex_cw, ex_ucw, rng.getrandbits(64))))
        + CWE_ANSWER_PREFIX
        + _numbered(ex_words[:CWE_NUM_CW])
    )
    order = rng.sample(pool, len(pool))
    shuffle_seed = rng.getrandbits(64)

    def render(units: int) -> tuple[str, str]:
        words = word_list(order[:units], freq_cw, freq_ucw, shuffle_seed)
        return example + "\n" + CWE_TEMPLATE.format(context=_numbered(words)), CWE_ANSWER_PREFIX

    return _Draft(render, tuple(order[:CWE_NUM_CW]), CWE_NUM_CW + 1, len(pool), lambda u: math.nan)


def _zeta(alpha: float) -> float:
    """Riemann zeta(alpha) for alpha > 1 (partial sum + Euler-Maclaurin tail; pi^2/6 for alpha=2)."""
    if alpha == 2.0:
        return math.pi**2 / 6
    n = 10_000
    return sum(k**-alpha for k in range(1, n)) + n ** (1 - alpha) / (alpha - 1) + 0.5 * n**-alpha


def _draft_fwe(rng: random.Random, ctx: int) -> _Draft:
    """RULER's frequent words extraction: zeta-distributed counts over ctx//50 coded words; rank 1 is '...'."""
    vocab_size = max(ctx // 50, 8)
    vocab: set[str] = set()
    while len(vocab) < vocab_size:
        vocab.add("".join(rng.choices(string.ascii_lowercase, k=FWE_CODED_WORDLEN)))
    words = sorted(vocab)
    rng.shuffle(words)
    words[0] = "..."
    zeta = _zeta(FWE_ALPHA)
    shuffle_seed = rng.getrandbits(64)

    def render(units: int) -> tuple[str, str]:
        text: list[str] = []
        for k, w in enumerate(words, start=1):
            text.extend([w] * int(units * k**-FWE_ALPHA / zeta))
        random.Random(shuffle_seed).shuffle(text)
        return FWE_TEMPLATE.format(context=" ".join(text)), FWE_ANSWER_PREFIX

    # At least 30 units so the third answer word occurs and outnumbers the fourth.
    return _Draft(render, tuple(words[1:4]), 30, 4 * ctx + 64, lambda u: math.nan)


def _draft_qa(spec: TaskSpec, rng: random.Random, qa_path) -> _Draft:
    qas, docs = load_qa(spec.qa_dataset, qa_path)
    qa = qas[rng.randrange(len(qas))]
    gold = list(dict.fromkeys(qa["context"]))
    more = [d for d in dict.fromkeys(qa.get("more_context", [])) if d not in gold]
    rng.shuffle(more)
    taken = set(gold) | set(more)
    pick_rng = random.Random(rng.getrandbits(64))

    def other() -> int | None:
        if len(taken) >= len(docs):
            return None
        while True:
            i = pick_rng.randrange(len(docs))
            if i not in taken:
                taken.add(i)
                return i

    extra = _Stream(other)
    head = gold + more
    shuffle_seed = rng.getrandbits(64)

    def chosen(units: int) -> list[int]:
        ids = head[:units] + extra.take(max(0, units - len(head)))
        random.Random(shuffle_seed).shuffle(ids)
        return ids

    def render(units: int) -> tuple[str, str]:
        context = "\n\n".join(
            QA_DOCUMENT.format(i=i + 1, document=docs[d]) for i, d in enumerate(chosen(units))
        )
        return QA_TEMPLATE.format(context=context, query=qa["query"]), QA_ANSWER_PREFIX

    def depth(units: int) -> float:
        ids = chosen(units)
        first = min(ids.index(g) for g in gold)
        return 100.0 * first / max(len(ids) - 1, 1)

    return _Draft(render, tuple(qa["outputs"]), len(gold), len(docs), depth)


def _draft(spec: TaskSpec, rng: random.Random, depth: float, ctx: int, essay_path, qa_path) -> _Draft:
    if spec.kind == "niah":
        essay = load_essay(essay_path) if spec.needs_essay else None
        return _draft_niah(spec, rng, depth, ctx, essay)
    if spec.kind == "niah_lmeval":
        return _draft_niah_lmeval(spec, rng, depth, ctx)
    if spec.kind == "passkey":
        return _draft_passkey(rng, depth, ctx)
    if spec.kind == "vt":
        return _draft_vt(rng, ctx)
    if spec.kind == "cwe":
        return _draft_cwe(rng, ctx)
    if spec.kind == "fwe":
        return _draft_fwe(rng, ctx)
    if spec.kind == "qa":
        return _draft_qa(spec, rng, qa_path)
    raise ValueError(f"unknown task kind {spec.kind!r}")


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
            draft = _draft(spec, rng, depth, ctx, essay_path, qa_path)
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
