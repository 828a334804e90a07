"""RULER scoring: case-insensitive substring match of the references in the prediction, in percent.

Same formulas as RULER's ``scripts/eval/synthetic/constants.py`` (``string_match_all`` for every task
but QA, ``string_match_part`` for QA), without RULER's final ``round(score, 2)`` so that per-sample
scores can be averaged exactly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .tasks import get_task

_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess_pred(prediction: str) -> str:
    """RULER's postprocess_pred: strip, and turn control characters into newlines."""
    return _CONTROL.sub("\n", prediction.strip()).strip()


def _as_refs(refs) -> list[str]:
    refs = [refs] if isinstance(refs, str) else [str(r) for r in refs]
    if not refs:
        raise ValueError("a sample needs at least one reference answer")
    return refs


def _check(preds: Sequence[str], refs: Sequence) -> None:
    if len(preds) == 0:
        raise ValueError("no predictions to score")
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions but {len(refs)} reference lists")


def _fraction_found(pred: str, refs: list[str]) -> float:
    p = pred.lower()
    return sum(r.lower() in p for r in refs) / len(refs)


def _any_found(pred: str, refs: list[str]) -> float:
    p = pred.lower()
    return max(float(r.lower() in p) for r in refs)


def string_match_all(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Mean over samples of the fraction of references found in the prediction, x100 (RULER)."""
    _check(preds, refs)
    return 100.0 * sum(_fraction_found(p, _as_refs(r)) for p, r in zip(preds, refs)) / len(preds)


def string_match_part(preds: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Mean over samples of 1 if any reference is found in the prediction else 0, x100 (RULER)."""
    _check(preds, refs)
    return 100.0 * sum(_any_found(p, _as_refs(r)) for p, r in zip(preds, refs)) / len(preds)


def score_sample(task: str, prediction: str, answers) -> float:
    """Score of one generation in 0..100 with the task's RULER metric (after RULER's postprocessing)."""
    spec = get_task(task)
    pred = postprocess_pred(prediction)
    refs = _as_refs(answers)
    return 100.0 * (_any_found(pred, refs) if spec.metric == "part" else _fraction_found(pred, refs))
