"""RULER task registry and prompt templates.

Templates, answer prefixes and task parameters follow NVIDIA RULER (scripts/synthetic.yaml and
scripts/data/synthetic/constants.py), including its typo "assgined" in the variable-tracking answer
prefix. ``passkey`` is the landmark-attention passkey prompt and ``niah_single_1_lmeval`` is
lm-evaluation-harness's port of niah_single_1 (lm_eval/tasks/ruler).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .haystack import essay_problem, resolve_essay_path, resolve_qa_path, wonderwords_available

# ----------------------------------------------------------------------------------------------- templates

NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
NIAH_TEMPLATE = (
    "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
    "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?"
)
NIAH_ANSWER_PREFIX = " The special magic {type_needle_v} for {query} mentioned in the provided text are"

VT_TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
    "Question: Find all variables that are assigned the value {query} in the text above."
)
VT_ANSWER_PREFIX = (
    " Answer: According to the chain(s) of variable assignment in the text above, "
    "{num_v} variables are assgined the value {query}, they are: "
)

CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n{context}\n"
    "Question: What are the 10 most common words in the above list?"
)
CWE_ANSWER_PREFIX = " Answer: The top 10 words that appear most often in the list are:"

FWE_TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. "
    "Find the three most frequently appeared coded words. {context}\n"
    "Question: Do not provide any explanation. Please ignore the dots '....'. "
    "What are the three most frequently appeared words in the above coded text?"
)
FWE_ANSWER_PREFIX = (
    " Answer: According to the coded text above, the three most frequently appeared words are:"
)

QA_TEMPLATE = (
    "Answer the question based on the given documents. Only give me the answer and do not output any other words."
    "\n\nThe following are given documents.\n\n{context}\n\n"
    "Answer the question based on the given documents. Only give me the answer and do not output any other words."
    "\n\nQuestion: {query}"
)
QA_ANSWER_PREFIX = " Answer:"
QA_DOCUMENT = "Document {i}:\n{document}"

PASSKEY_TASK = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
    "I will quiz you about the important information there."
)
PASSKEY_INFO = "The pass key is {key}. Remember it. {key} is the pass key."
PASSKEY_QUESTION = "What is the pass key?"
PASSKEY_ANSWER_PREFIX = " The pass key is"

# lm-eval's niah gen_prefix (its singular form); lm-eval joins it to the question with one space.
LMEVAL_GEN_PREFIX = "The special magic {type_needle_v} for {query} mentioned in the provided text is"

# RULER's needle depth grid (np.round(np.linspace(0, 100, 40))), used for the extra needles of multi-needle tasks.
DEPTH_GRID: tuple[int, ...] = tuple(round(100 * i / 39) for i in range(40))


def _singular(text: str) -> str:
    """RULER's rewrite of the niah template when only one value is asked for."""
    return (
        text.replace("Some", "A").replace("are all", "is").replace("are", "is").replace("answers", "answer")
    )


def niah_prompt(spec: TaskSpec, context: str, query: str) -> tuple[str, str]:
    """(input text, answer prefix) of a niah task, singular when one value is asked for (as RULER)."""
    template, prefix, type_v = NIAH_TEMPLATE, NIAH_ANSWER_PREFIX, spec.value_type
    if spec.num_queries * spec.num_values == 1:
        template, prefix, type_v = _singular(template), _singular(prefix), type_v[:-1]
    return (
        template.format(type_needle_v=type_v, context=context, query=query),
        prefix.format(type_needle_v=type_v, query=query),
    )


# ------------------------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class TaskSpec:
    """One RULER-style task. ``kind`` picks the generator; the rest are its RULER parameters."""

    name: str
    kind: str  # "niah" | "niah_lmeval" | "passkey" | "vt" | "cwe" | "fwe" | "qa"
    max_new_tokens: int
    metric: str = "all"  # "all" (string_match_all) or "part" (string_match_part)
    haystack: str | None = None  # "noise" | "essay" | "needle" for needle tasks
    key_type: str = "words"  # needle keys: "words" | "numbers" | "uuids"
    value_type: str = "numbers"  # needle values: "numbers" | "uuids"
    num_keys: int = 1  # needles with different keys (the extra ones are distractors unless queried)
    num_values: int = 1  # values per key
    num_queries: int = 1  # keys asked for
    qa_dataset: str | None = None  # "squad" | "hotpotqa"
    description: str = ""

    @property
    def needs_essay(self) -> bool:
        return self.haystack == "essay"

    @property
    def needs_words(self) -> bool:
        """Uses the wonderwords lists (word keys, CWE vocabulary)."""
        return self.kind == "cwe" or (self.kind in ("niah", "niah_lmeval") and self.key_type == "words")


def _niah(name: str, haystack: str, desc: str, **kw) -> TaskSpec:
    return TaskSpec(name=name, kind="niah", max_new_tokens=128, haystack=haystack, description=desc, **kw)


_ALL = [
    _niah("niah_single_1", "noise", "single needle, word key, 7-digit value, noise haystack"),
    _niah("niah_single_2", "essay", "single needle, word key, 7-digit value, essay haystack"),
    _niah(
        "niah_single_3", "essay", "single needle, word key, uuid value, essay haystack", value_type="uuids"
    ),
    _niah(
        "niah_multikey_1",
        "essay",
        "1 needle + 3 distractor needles with other keys, essay haystack",
        num_keys=4,
    ),
    _niah("niah_multikey_2", "needle", "single needle in a haystack of needles (word keys, numbers)"),
    _niah(
        "niah_multikey_3",
        "needle",
        "single needle in a haystack of needles (uuid keys, uuid values)",
        key_type="uuids",
        value_type="uuids",
    ),
    _niah("niah_multivalue", "essay", "4 values for the same key, essay haystack", num_values=4),
    _niah("niah_multiquery", "essay", "4 keys asked at once, essay haystack", num_keys=4, num_queries=4),
    TaskSpec(
        "vt", "vt", 30, description="variable tracking: 1 chain of 4 hops in noise, with a 1-shot example"
    ),
    TaskSpec("cwe", "cwe", 120, description="common words extraction (freq_cw=30, freq_ucw=3, num_cw=10)"),
    TaskSpec("fwe", "fwe", 50, description="frequent words extraction (zeta alpha=2.0)"),
    TaskSpec(
        "qa_1", "qa", 32, metric="part", qa_dataset="squad", description="SQuAD v2 question over documents"
    ),
    TaskSpec(
        "qa_2", "qa", 32, metric="part", qa_dataset="hotpotqa", description="HotpotQA question over documents"
    ),
    TaskSpec("passkey", "passkey", 16, description="landmark-attention passkey retrieval (5-digit key)"),
    TaskSpec(
        "niah_single_1_lmeval",
        "niah_lmeval",
        128,
        haystack="noise",
        description="lm-eval's niah_single_1: whole noise paragraphs sized in steps of 25 (5 below 4096)",
    ),
]

TASKS: dict[str, TaskSpec] = {t.name: t for t in _ALL}
"""Every task, by name."""

RULER_TASKS: tuple[str, ...] = tuple(t.name for t in _ALL[:13])
"""The 13 tasks of the RULER benchmark, in RULER's order."""


def get_task(task: str) -> TaskSpec:
    """The spec of ``task``; ValueError naming the known tasks if it does not exist."""
    try:
        return TASKS[task]
    except (KeyError, TypeError):
        raise ValueError(f"unknown RULER task {task!r}; known: {', '.join(TASKS)}") from None


def task_unavailable_reason(
    task: str, *, essay_path: str | os.PathLike | None = None, qa_path: str | os.PathLike | None = None
) -> str | None:
    """None if ``task`` can be generated with this data; else a one-line reason. ValueError if unknown."""
    spec = get_task(task)
    if spec.needs_words and not wonderwords_available():
        return f"{task}: needs the `wonderwords` package for its word lists (pip install wonderwords)"
    if spec.needs_essay:
        problem = essay_problem(resolve_essay_path(essay_path))
        if problem:
            return f"{task}: {problem}"
    if spec.kind == "qa":
        _, problem = resolve_qa_path(spec.qa_dataset, qa_path)
        if problem:
            return f"{task}: {problem}"
    return None
