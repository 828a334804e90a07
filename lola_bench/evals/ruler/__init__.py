"""Offline RULER synthetic tasks: prompt generation sized to a context length, and RULER's scorers."""

from .generate import RulerSample, generate_samples, sample_depths
from .haystack import load_essay, load_qa, split_sentences
from .scoring import postprocess_pred, score_sample, string_match_all, string_match_part
from .tasks import RULER_TASKS, TASKS, TaskSpec, get_task, task_unavailable_reason

__all__ = [
    "RULER_TASKS",
    "TASKS",
    "RulerSample",
    "TaskSpec",
    "generate_samples",
    "get_task",
    "load_essay",
    "load_qa",
    "postprocess_pred",
    "sample_depths",
    "score_sample",
    "split_sentences",
    "string_match_all",
    "string_match_part",
    "task_unavailable_reason",
]
