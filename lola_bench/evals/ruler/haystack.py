"""Haystack material for the RULER generator: noise sentences, Paul Graham essays, QA documents, word lists.

Everything here is offline and deterministic. Sentence splitting is a small regex rule (no nltk, no
downloads): a sentence ends after a word ending in ``.``, ``!`` or ``?`` (optionally followed by closing
quotes/brackets) when the next word starts with a capital letter, a digit or an opening quote/bracket.
"""

from __future__ import annotations

import bisect
import functools
import importlib.resources
import importlib.util
import itertools
import json
import os
import re
from pathlib import Path

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
"""RULER's noise haystack (also the filler of the landmark-attention passkey test)."""

ESSAY_ENV = "LOLA_BENCH_ESSAY"
QA_ENV = "LOLA_BENCH_QA"

# File names looked up when a QA path is a directory (RULER's names first, then the upstream names).
QA_FILE_NAMES = {
    "squad": ("squad.json", "dev-v2.0.json", "squad_dev_v2.0.json"),
    "hotpotqa": ("hotpotqa.json", "hotpot_dev_distractor_v1.json"),
}

_SENT_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*$")
_SENT_START = re.compile(r"[\"'\u201c\u2018(\[]*[A-Z0-9]")


def _sentence_starts(words: list[str]) -> list[int]:
    """Word indices at which a sentence starts (always includes 0 for a non-empty list)."""
    if not words:
        return []
    starts = [0]
    for i in range(len(words) - 1):
        if _SENT_END.search(words[i]) and _SENT_START.match(words[i + 1]):
            starts.append(i + 1)
    return starts


def split_words(text: str) -> list[str]:
    """Collapse all whitespace to single spaces and split on it, as RULER does for its essay haystack."""
    text = re.sub(r"\s+", " ", text).strip()
    return text.split(" ") if text else []


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences with the regex rule above; whitespace is normalised to single spaces."""
    words = split_words(text)
    starts = _sentence_starts(words) + [len(words)]
    return [" ".join(words[a:b]) for a, b in itertools.pairwise(starts)]


NOISE_SENTENCES: tuple[str, ...] = tuple(split_sentences(NOISE))


def noise_sentences(n: int) -> list[str]:
    """The first ``n`` sentences of the noise text repeated forever."""
    k = len(NOISE_SENTENCES)
    return [NOISE_SENTENCES[i % k] for i in range(n)]


def noise_lines(n_sentences: int) -> list[str]:
    """``n_sentences`` noise sentences grouped into full noise paragraphs; the last one may be partial."""
    k = len(NOISE_SENTENCES)
    full, rest = divmod(n_sentences, k)
    lines = [NOISE] * full
    if rest:
        lines.append(" ".join(NOISE_SENTENCES[:rest]))
    return lines


def insert_at_depths(units: list[str], needles: list[tuple[float, str]]) -> list[str]:
    """Insert each ``(depth_percent, text)`` before unit ``int(len(units) * depth / 100)`` (RULER's rule).

    Needles that land on the same slot keep their input order; depth 100 appends at the end.
    """
    n = len(units)
    cuts = sorted((min(n, max(0, int(n * depth / 100))), j, text) for j, (depth, text) in enumerate(needles))
    out: list[str] = []
    prev = 0
    for pos, _, text in cuts:
        out.extend(units[prev:pos])
        out.append(text)
        prev = pos
    out.extend(units[prev:])
    return out


class EssayHaystack:
    """The essay text as a word list with sentence boundaries; repeats itself when more words are needed."""

    def __init__(self, text: str, source: str = "<text>"):
        self.source = source
        self._base = split_words(text)
        if len(self._base) < 2:
            raise ValueError(f"essay haystack {source} has no usable text")
        self._base_starts = _sentence_starts(self._base)
        self._words = list(self._base)
        self._starts = list(self._base_starts)

    def __len__(self) -> int:
        return len(self._base)

    def _ensure(self, n_words: int) -> None:
        while len(self._words) < n_words:
            offset = len(self._words)
            self._words.extend(self._base)
            self._starts.extend(offset + s for s in self._base_starts)

    def n_sentences(self, n_words: int) -> int:
        """Number of sentences (the last possibly cut) in the first ``n_words`` words."""
        self._ensure(n_words)
        return bisect.bisect_left(self._starts, n_words)

    def context(self, n_words: int, needles: list[tuple[float, str]] = ()) -> str:
        """The first ``n_words`` words, with each ``(depth, text)`` needle inserted at a sentence boundary.

        The boundary is sentence ``int(n_sentences * depth / 100)`` exactly as in RULER's niah.py.
        """
        self._ensure(n_words)
        words = self._words
        m = bisect.bisect_left(self._starts, n_words)
        cuts = sorted((min(m, max(0, int(m * d / 100))), j, t) for j, (d, t) in enumerate(needles))
        pieces: list[str] = []
        prev = 0
        for sent_idx, _, text in cuts:
            w = self._starts[sent_idx] if sent_idx < m else n_words
            if w > prev:
                pieces.append(" ".join(words[prev:w]))
                prev = w
            pieces.append(text)
        if prev < n_words:
            pieces.append(" ".join(words[prev:n_words]))
        return " ".join(pieces)


def resolve_essay_path(essay_path: str | os.PathLike | None = None) -> Path | None:
    """The essay source: the explicit path, else ``$LOLA_BENCH_ESSAY``, else None."""
    if essay_path:
        return Path(essay_path).expanduser()
    env = os.environ.get(ESSAY_ENV)
    return Path(env).expanduser() if env else None


def essay_problem(path: Path | None) -> str | None:
    """Why ``path`` cannot serve as an essay haystack, or None if it is usable: missing, unreadable, not UTF-8,
    malformed JSON, or no text. The file is parsed once here (cached), so a bad haystack is reported before any
    model work."""
    problem = _essay_path_problem(path)
    if problem:
        return problem
    try:
        resolved = path.resolve()
        _load_essay_cached(str(resolved), resolved.stat().st_mtime)
    except UnicodeDecodeError:
        return f"essay data {path} is not UTF-8 text"
    except OSError as e:
        return f"cannot read essay data {path}: {e.strerror or e}"
    except ValueError as e:
        return " ".join(str(e).split())
    return None


def _essay_path_problem(path: Path | None) -> str | None:
    """The cheap part of ``essay_problem``: the path exists (a directory holds .txt files)."""
    if path is None:
        return (f"essay data missing: pass --essay-path or set {ESSAY_ENV} (RULER's PaulGrahamEssays.json or a "
                f"directory of .txt essays)")
    if not path.exists():
        return f"essay data not found at {path}: pass --essay-path or set {ESSAY_ENV}"
    if path.is_dir() and not any(path.glob("*.txt")):
        return f"essay directory {path} has no .txt files"
    return None


def load_essay_text(path: str | os.PathLike) -> str:
    """Read RULER's essay JSON (``{"text": ...}``), a directory of ``.txt`` files (sorted names) or a .txt file."""
    p = Path(path).expanduser()
    problem = _essay_path_problem(p)
    if problem:
        raise ValueError(problem)
    if p.is_dir():
        return "\n".join(f.read_text(encoding="utf-8") for f in sorted(p.glob("*.txt")))
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"essay file {p} is not valid JSON: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("text"), str):
            raise ValueError(f'essay file {p} must be a JSON object {{"text": ...}} as in RULER')
        return data["text"]
    return p.read_text(encoding="utf-8")


@functools.lru_cache(maxsize=4)
def _load_essay_cached(resolved: str, mtime: float) -> EssayHaystack:
    return EssayHaystack(load_essay_text(resolved), source=resolved)


def load_essay(essay_path: str | os.PathLike | None = None) -> EssayHaystack:
    """The (cached) essay haystack from ``essay_path`` or ``$LOLA_BENCH_ESSAY``; ValueError if unavailable."""
    path = resolve_essay_path(essay_path)
    problem = essay_problem(path)
    if problem:
        raise ValueError(problem)
    resolved = path.resolve()
    return _load_essay_cached(str(resolved), resolved.stat().st_mtime)


# ----------------------------------------------------------------------------------------------- QA data


def resolve_qa_path(dataset: str, qa_path: str | os.PathLike | None = None) -> tuple[Path | None, str | None]:
    """The QA data file for ``dataset`` ('squad' or 'hotpotqa') and, if unusable, why.

    ``qa_path`` (else ``$LOLA_BENCH_QA``) may be the data file itself or a directory holding it under
    RULER's name (squad.json / hotpotqa.json) or the upstream name (dev-v2.0.json /
    hotpot_dev_distractor_v1.json).
    """
    label = {"squad": "SQuAD v2 dev (qa_1)", "hotpotqa": "HotpotQA distractor dev (qa_2)"}[dataset]
    raw = qa_path or os.environ.get(QA_ENV)
    if not raw:
        return (
            None,
            f"qa data missing: pass --qa-path or set {QA_ENV} to the {label} JSON file or its directory",
        )
    p = Path(raw).expanduser()
    if not p.exists():
        return None, f"qa data not found at {p}: pass --qa-path or set {QA_ENV}"
    if p.is_dir():
        found = [p / name for name in QA_FILE_NAMES[dataset] if (p / name).is_file()]
        if not found:
            return None, f"qa directory {p} has none of {', '.join(QA_FILE_NAMES[dataset])} ({label})"
        p = found[0]
    kind = _sniff_qa_kind(p)
    if kind is not None and kind != dataset:
        return None, f"qa file {p} looks like {kind} data, but this task needs {label}"
    try:                                   # parsed once here (cached): a malformed file fails before model work
        resolved = p.resolve()
        _load_qa_cached(dataset, str(resolved), resolved.stat().st_mtime)
    except UnicodeDecodeError:
        return None, f"qa file {p} is not UTF-8 text"
    except OSError as e:
        return None, f"cannot read qa file {p}: {e.strerror or e}"
    except ValueError as e:
        return None, " ".join(str(e).split())
    return p, None


def _sniff_qa_kind(path: Path) -> str | None:
    """'squad' for a JSON object, 'hotpotqa' for a JSON list, None if unclear (first non-blank byte)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096).lstrip()
    except OSError:
        return None
    if head.startswith(b"{"):
        return "squad"
    if head.startswith(b"["):
        return "hotpotqa"
    return None


def _read_squad(data) -> tuple[list[dict], list[str]]:
    """RULER's read_squad: answerable questions; documents are the unique paragraphs (sorted)."""
    docs = sorted({p["context"] for d in data["data"] for p in d["paragraphs"]})
    index = {c: i for i, c in enumerate(docs)}
    qas = []
    for d in data["data"]:
        article = [index[p["context"]] for p in d["paragraphs"]]
        for p in d["paragraphs"]:
            own = index[p["context"]]
            for qa in p["qas"]:
                if qa.get("is_impossible", False) or not qa.get("answers"):
                    continue
                qas.append(
                    {
                        "query": qa["question"],
                        "outputs": [a["text"] for a in qa["answers"]],
                        "context": [own],
                        "more_context": [i for i in article if i != own],
                    }
                )
    return qas, docs


def _read_hotpotqa(data) -> tuple[list[dict], list[str]]:
    """RULER's read_hotpotqa: a document is ``title\\n`` + the joined sentences of one paragraph."""
    docs = sorted({f"{t}\n{''.join(p)}" for d in data for t, p in d["context"]})
    index = {c: i for i, c in enumerate(docs)}
    qas = [
        {
            "query": d["question"],
            "outputs": [d["answer"]],
            "context": [index[f"{t}\n{''.join(p)}"] for t, p in d["context"]],
        }
        for d in data
    ]
    return qas, docs


@functools.lru_cache(maxsize=4)
def _load_qa_cached(dataset: str, resolved: str, mtime: float) -> tuple[tuple[dict, ...], tuple[str, ...]]:
    try:
        with open(resolved, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"qa file {resolved} is not valid JSON: {e}") from None
    try:
        qas, docs = _read_squad(data) if dataset == "squad" else _read_hotpotqa(data)
    except (KeyError, TypeError, ValueError) as e:
        want = "SQuAD ({'data': [...]})" if dataset == "squad" else "HotpotQA ([{question, answer, context}])"
        raise ValueError(f"qa file {resolved} is not in {want} format: {e!r}") from None
    if not qas or not docs:
        raise ValueError(f"qa file {resolved} has no usable questions")
    return tuple(qas), tuple(docs)


def load_qa(
    dataset: str, qa_path: str | os.PathLike | None = None
) -> tuple[tuple[dict, ...], tuple[str, ...]]:
    """(questions, documents) for 'squad' or 'hotpotqa', read as RULER's qa.py reads them (cached)."""
    path, problem = resolve_qa_path(dataset, qa_path)
    if problem:
        raise ValueError(problem)
    resolved = path.resolve()
    return _load_qa_cached(dataset, str(resolved), resolved.stat().st_mtime)


# --------------------------------------------------------------------------------------------- word lists


def wonderwords_available() -> bool:
    """True when the ``wonderwords`` package (RULER's word source) is importable."""
    return importlib.util.find_spec("wonderwords") is not None


@functools.cache
def _wordlist(name: str) -> tuple[str, ...]:
    if not wonderwords_available():
        raise ValueError("the RULER word lists need the `wonderwords` package: pip install wonderwords")
    text = (importlib.resources.files("wonderwords.assets") / f"{name}list.txt").read_text(encoding="utf-8")
    return tuple(w.strip() for w in text.splitlines() if w.strip())


@functools.lru_cache(maxsize=1)
def key_word_parts() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(adjectives, nouns): RULER's word keys are ``adjective-noun``."""
    return tuple(sorted(set(_wordlist("adjective")))), tuple(sorted(set(_wordlist("noun"))))


@functools.lru_cache(maxsize=1)
def common_words() -> tuple[str, ...]:
    """RULER's CWE vocabulary: the sorted set of wonderwords nouns, adjectives and verbs."""
    return tuple(sorted(set(_wordlist("noun")) | set(_wordlist("adjective")) | set(_wordlist("verb"))))


def default_essay_path(explicit: str | None = None) -> str | None:
    """--essay-path, else $LOLA_BENCH_ESSAY, else the staged RULER essays in the data directory."""
    from ...paths import data_dir

    p = resolve_essay_path(explicit)
    if p is not None:
        return str(p)
    d = data_dir()
    default = d / "ruler_essay" / "PaulGrahamEssays.json" if d else None
    return str(default) if default is not None and default.is_file() else None
