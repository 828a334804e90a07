"""`--task all` means the RULER tasks whose data is present, and says which it skipped."""

import pytest

from lola_bench.errors import UserError
from lola_bench.evals.ruler import RULER_TASKS, TASKS
from lola_bench.evals.ruler_bench import expand_tasks


def test_all_without_essays_or_qa_keeps_the_synthetic_tasks_and_lists_the_rest(monkeypatch):
    monkeypatch.delenv("LOLA_BENCH_ESSAY", raising=False)
    monkeypatch.delenv("LOLA_BENCH_QA", raising=False)
    skipped = {}
    tasks = expand_tasks(["all"], essay_path=None, qa_path=None, skipped=skipped)
    assert tasks and set(tasks) | set(skipped) == set(RULER_TASKS) and not set(tasks) & set(skipped)
    assert {"qa_1", "qa_2"} <= set(skipped) and {"vt", "cwe", "fwe"} <= set(tasks)
    assert all(TASKS[t].needs_essay or TASKS[t].kind == "qa" for t in skipped)
    assert all("missing" in reason or "not found" in reason for reason in skipped.values())


def test_named_tasks_are_not_filtered_and_unknown_ones_refused():
    assert expand_tasks(["qa_1", "passkey", "qa_1"]) == ["qa_1", "passkey"]
    with pytest.raises(UserError, match="unknown task"):
        expand_tasks(["nope"])
