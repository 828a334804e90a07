"""RULER's per-task sample generators ("drafts"): the random choices of one sample, drawn up front.

Each ``_draft_*`` function takes the sample's RNG and draws every key, value, needle depth and shuffle first,
then returns a ``Draft`` whose ``render(units)`` builds (input text, answer prefix) for a haystack of ``units``
noise sentences, essay words, distractor needles, words or documents. ``make_draft`` dispatches on the task
kind (niah, niah_lmeval, passkey, vt, cwe, fwe, qa). The RULER parameters the generators use live here too;
fitting a draft to a context length and assembling the final prompt is ``generate.py``'s job.
"""

from __future__ import annotations

import math
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
    niah_prompt,
)

# RULER parameters (scripts/synthetic.yaml and the synthetic/*.py defaults).
VT_NUM_CHAINS, VT_NUM_HOPS = 1, 4
VT_ICL_NOISE_LINES = 10  # RULER sizes its 1-shot example to <= 500 tokens in steps of 5 noise paragraphs
CWE_NUM_CW, CWE_FREQ_CW, CWE_FREQ_UCW = 10, 30, 3
FWE_ALPHA, FWE_CODED_WORDLEN = 2.0, 6
LMEVAL_STEP_LONG, LMEVAL_STEP_SHORT = 25, 5  # lm-eval's haystack increments (ctx >= 4096 / below)


@dataclass
class Draft:
    """The random choices of one sample; ``render(units)`` gives (input text, answer prefix)."""

    render: Callable[[int], tuple[str, str]]
    answers: tuple[str, ...]
    min_units: int
    max_units: int
    depth: Callable[[int], float]
    unique: tuple[str, ...] = ()  # strings that must occur exactly once in the prompt
    step: int = 1  # haystack sizes are multiples of this (lm-eval port only)


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
) -> Draft:
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

    return Draft(
        render=lambda u: niah_prompt(spec, context(u), query),
        answers=answers,
        min_units=1,
        max_units=max_units,
        depth=lambda u: depth,
        unique=answers,
    )


def _draft_niah_lmeval(spec: TaskSpec, rng: random.Random, depth: float, ctx: int) -> Draft:
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
    return Draft(render, (value,), step, ctx + step, lambda u: depth, unique=(value,), step=step)


def _draft_passkey(rng: random.Random, depth: float, ctx: int) -> Draft:
    """Landmark-attention passkey prompt; the key is a random 5-digit number (10000..99999)."""
    key = str(rng.randint(10000, 99999))
    info = PASSKEY_INFO.format(key=key)

    def render(units: int) -> tuple[str, str]:
        sents = noise_sentences(units)
        cut = int(units * depth / 100)
        text = "\n".join([PASSKEY_TASK, " ".join(sents[:cut]), info, " ".join(sents[cut:]), PASSKEY_QUESTION])
        return text, PASSKEY_ANSWER_PREFIX

    return Draft(render, (key,), 1, 2 * ctx + 16, lambda u: depth)


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


def _draft_vt(rng: random.Random, ctx: int) -> Draft:
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

    return Draft(render, tuple(names), 1, 2 * ctx + 16, depth)


def _numbered(words: list[str]) -> str:
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(words))


def _draft_cwe(rng: random.Random, ctx: int) -> Draft:
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

    return Draft(render, tuple(order[:CWE_NUM_CW]), CWE_NUM_CW + 1, len(pool), lambda u: math.nan)


def _zeta(alpha: float) -> float:
    """Riemann zeta(alpha) for alpha > 1 (partial sum + Euler-Maclaurin tail; pi^2/6 for alpha=2)."""
    if alpha == 2.0:
        return math.pi**2 / 6
    n = 10_000
    return sum(k**-alpha for k in range(1, n)) + n ** (1 - alpha) / (alpha - 1) + 0.5 * n**-alpha


def _draft_fwe(rng: random.Random, ctx: int) -> Draft:
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
    return Draft(render, tuple(words[1:4]), 30, 4 * ctx + 64, lambda u: math.nan)


def _draft_qa(spec: TaskSpec, rng: random.Random, qa_path) -> Draft:
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

    return Draft(render, tuple(qa["outputs"]), len(gold), len(docs), depth)


def make_draft(spec: TaskSpec, rng: random.Random, depth: float, ctx: int, essay_path, qa_path) -> Draft:
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
