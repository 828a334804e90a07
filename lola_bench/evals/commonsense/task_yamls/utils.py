"""Offline loaders and prompt helpers for the local ``lola_*`` lm-eval tasks.

lm-eval imports this file by path (``!function utils.<name>`` in the YAMLs beside
it), so it must stay self-contained: standard library + ``datasets`` only.

Every ``load_*`` function is an lm-eval ``custom_dataset``: lm-eval calls it with
the task's ``metadata`` and ``dataset_kwargs`` as keyword arguments and expects a
``datasets.DatasetDict``. The data directory comes from ``data_dir`` in the
metadata (``lola_bench.evals.commonsense`` passes it through
``TaskManager(metadata={"data_dir": ...})``) or, failing that, from the
``LOLA_BENCH_DATA`` environment variable. Nothing here touches the network:
files are read with the standard library and turned into in-memory datasets.

Each loader yields documents in the schema of the Hugging Face dataset that the
official lm-eval 0.4.13 task reads, so the YAMLs can use the official
``doc_to_text`` / ``doc_to_choice`` / ``doc_to_target`` unchanged.
"""

from __future__ import annotations

import bz2
import csv
import json
import os
import re
from pathlib import Path

import datasets

DATA_ENV_VAR = "LOLA_BENCH_DATA"

# The 19 WikiHow categories used as HellaSwag ``activity_label``s; every other
# label is an ActivityNet activity (the two sources need different context repair).
WIKIHOW_CATEGORIES = frozenset(
    {
        "Cars & Other Vehicles",
        "Computers and Electronics",
        "Education and Communications",
        "Family Life",
        "Finance and Business",
        "Food and Entertaining",
        "Health",
        "Holidays and Traditions",
        "Home and Garden",
        "Home,Categories",
        "Personal Care and Style",
        "Pets and Animals",
        "Philosophy and Religion",
        "Relationships",
        "Sports and Fitness",
        "Travel",
        "Uncategorized",
        "Work World",
        "Youth",
    }
)

# Last sentence end (optionally followed by closing quotes/brackets), then the tail.
_TAIL_RE = re.compile(r"^(.*[.!?][\"')]*) (\S.*)$", re.DOTALL)


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """Return the data directory: the argument, else ``$LOLA_BENCH_DATA``."""
    root = data_dir or os.environ.get(DATA_ENV_VAR)
    if not root:
        raise FileNotFoundError(
            f"no local data directory: pass data_dir (TaskManager metadata) or set {DATA_ENV_VAR}"
        )
    return Path(root).expanduser()


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"missing local data file: {path}")
    return path


def _read_jsonl(path: Path) -> list[dict]:
    with open(_existing(path), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------- PIQA


def load_piqa(data_dir=None, **_) -> datasets.DatasetDict:
    """PIQA validation: ``valid.jsonl`` joined line by line with ``valid-labels.lst``.

    Schema of ``baber/piqa``: ``goal, sol1, sol2, label`` (label 0 means sol1).
    """
    root = data_root(data_dir) / "piqa"
    docs = _read_jsonl(root / "valid.jsonl")
    with open(_existing(root / "valid-labels.lst"), encoding="utf-8") as f:
        labels = [int(line) for line in f if line.strip()]
    if len(labels) != len(docs):
        raise ValueError(f"piqa: {len(docs)} questions but {len(labels)} labels in {root}")
    rows = [
        {"goal": d["goal"], "sol1": d["sol1"], "sol2": d["sol2"], "label": y} for d, y in zip(docs, labels)
    ]
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)})


# ---------------------------------------------------------------------------- ARC


def _arc_hf_schema(doc: dict) -> dict:
    """Convert one ARC record to the HF ``allenai/ai2_arc`` schema.

    Accepts the HF schema itself (``choices: {text, label}``, ``answerKey``) or
    the restructured one (``choices: {label: text}``, ``answer``), whose dict
    keeps the original label order.
    """
    choices = doc["choices"]
    if isinstance(choices, dict) and set(choices) == {"text", "label"}:
        text, label = list(choices["text"]), list(choices["label"])
    else:
        label, text = list(choices.keys()), list(choices.values())
    answer = doc["answerKey"] if "answerKey" in doc else doc["answer"]
    return {
        "id": doc["id"],
        "question": doc["question"],
        "choices": {"text": text, "label": label},
        "answerKey": answer,
    }


def load_arc(data_dir=None, subset: str = "easy", **_) -> datasets.DatasetDict:
    """ARC-Easy / ARC-Challenge test split from ``arc/arc_<subset>_test.json``."""
    path = _existing(data_root(data_dir) / "arc" / f"arc_{subset}_test.json")
    with open(path, encoding="utf-8") as f:
        rows = [_arc_hf_schema(d) for d in json.load(f)]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


# ---------------------------------------------------------------------- HellaSwag


def _restore_ctx_b_case(query: str) -> str:
    """Re-apply lm-eval's ``ctx_b.capitalize()`` to an ActivityNet context line.

    The preprocessed file only keeps ``activity_label: ctx_a ctx_b`` with
    ``ctx_b`` as in the raw data (lower-case start), while lm-eval builds
    ``ctx_a + " " + ctx_b.capitalize()``. For ActivityNet items ``ctx_b`` is the
    fragment after the last sentence end, so capitalising that tail recovers
    lm-eval's query (1000/1000 on the original-format sample). WikiHow items
    have an empty ``ctx_b`` and are left alone.
    """
    label, sep, ctx = query.partition(": ")
    if not sep or label in WIKIHOW_CATEGORIES:
        return query
    m = _TAIL_RE.match(ctx)
    if m is None or not m.group(2)[0].islower():
        return query
    return f"{label}{sep}{m.group(1)} {m.group(2).capitalize()}"


def load_hellaswag(data_dir=None, **_) -> datasets.DatasetDict:
    """HellaSwag validation (10042 items) from ``hellaswag_val_full.txt.bz2``.

    The file has six lines per item: ``activity_label: ctx`` (already cleaned of
    ``[title]``/``[step]``-style markers), the gold index, then the four endings.
    Documents get the fields lm-eval's ``hellaswag`` ``process_docs`` produces
    (``query``, ``choices``, ``gold``) plus ``label``. The ActivityNet
    capitalisation is restored (see ``_restore_ctx_b_case``); the remaining
    difference from lm-eval is that lm-eval keeps a leading space on WikiHow
    endings that began with a ``[title]``/``[substeps]`` marker (about 6% of
    items in the 1000-item sample), which this form cannot recover.
    """
    path = _existing(data_root(data_dir) / "hellaswag" / "hellaswag_val_full.txt.bz2")
    with bz2.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    while lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise ValueError(f"hellaswag: {len(lines)} lines in {path}, not a multiple of 6")
    rows = []
    for i in range(0, len(lines), 6):
        ctx, gold, *endings = lines[i : i + 6]
        rows.append(
            {
                "query": _restore_ctx_b_case(ctx),
                "choices": endings,
                "label": gold,
                "gold": int(gold),
            }
        )
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)})


# --------------------------------------------------------------------- WinoGrande


def load_winogrande(data_dir=None, **_) -> datasets.DatasetDict:
    """WinoGrande 1.1 dev (= ``winogrande_xl`` validation) from ``dev.jsonl``."""
    rows = [
        {
            "sentence": d["sentence"],
            "option1": d["option1"],
            "option2": d["option2"],
            "answer": str(d["answer"]),
        }
        for d in _read_jsonl(data_root(data_dir) / "winogrande" / "dev.jsonl")
    ]
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)})


# The three functions below are copied verbatim from lm-eval 0.4.13
# (lm_eval/tasks/winogrande/preprocess_winogrande.py): partial evaluation, one
# context per option, scored on the shared continuation after the blank.
def winogrande_doc_to_text(doc):
    answer_to_num = {"1": 0, "2": 1}
    return answer_to_num[doc["answer"]]


def winogrande_doc_to_target(doc):
    idx = doc["sentence"].index("_") + 1
    return doc["sentence"][idx:].strip()


def winogrande_doc_to_choice(doc):
    idx = doc["sentence"].index("_")
    options = [doc["option1"], doc["option2"]]
    return [doc["sentence"][:idx] + opt for opt in options]


# --------------------------------------------------------------------------- MMLU


def _read_mmlu_csv(path: Path, subject: str) -> list[dict]:
    # Same parsing as the original hendrycks_test HF loader (csv.reader, no header).
    with open(_existing(path), encoding="utf-8", newline="") as f:
        return [
            {
                "question": row[0],
                "subject": subject,
                "choices": row[1:5],
                "answer": "ABCD".index(row[5].strip()),
            }
            for row in csv.reader(f)
        ]


def load_mmlu(data_dir=None, subject: str | None = None, **_) -> datasets.DatasetDict:
    """One MMLU subject: ``test`` from ``mmlu/test/<subject>_test.csv`` and the
    few-shot ``dev`` split from ``mmlu/dev/<subject>_dev.csv`` (``cais/mmlu`` schema)."""
    if not subject:
        raise ValueError("load_mmlu needs dataset_kwargs.subject")
    root = data_root(data_dir) / "mmlu"
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_list(
                _read_mmlu_csv(root / split / f"{subject}_{split}.csv", subject)
            )
            for split in ("test", "dev")
        }
    )
