"""RULER scorers: string_match_all / string_match_part semantics (x100) and per-sample scores."""

from __future__ import annotations

import pytest

from lola_bench.evals.ruler import (
    TASKS,
    postprocess_pred,
    score_sample,
    string_match_all,
    string_match_part,
)


def test_string_match_all_examples():
    assert string_match_all(["The number is 1234567."], [["1234567"]]) == 100.0
    assert string_match_all(["nothing here"], [["1234567"]]) == 0.0
    # Fraction of the references found, averaged over samples.
    assert string_match_all(["a 11 b 22", "33"], [["11", "22", "44", "55"], ["33"]]) == pytest.approx(75.0)
    assert string_match_all(["x", "y", "z"], [["x"], ["q"], ["q"]]) == pytest.approx(100 / 3)


def test_string_match_part_examples():
    # Any one reference is enough for a sample; then the mean over samples.
    assert string_match_part(["Paris, France"], [["paris", "Lyon"]]) == 100.0
    assert string_match_part(["Paris", "Rome"], [["paris"], ["Milan", "Turin"]]) == 50.0
    assert string_match_part(["no"], [["yes", "maybe"]]) == 0.0


def test_matching_is_case_insensitive_substring():
    assert string_match_all(["VAR ABCDE and vwxyz"], [["abcde", "VWXYZ"]]) == 100.0
    assert string_match_all(["12345678"], [["1234567"]]) == 100.0  # substring, as in RULER
    assert string_match_part(["The Answer"], [["answer"]]) == 100.0


def test_scorer_input_errors():
    with pytest.raises(ValueError, match="no predictions"):
        string_match_all([], [])
    with pytest.raises(ValueError, match="2 predictions but 1"):
        string_match_part(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="at least one reference"):
        string_match_all(["a"], [[]])


def test_score_sample_uses_the_task_metric():
    # niah / vt / cwe / fwe / passkey: string_match_all.
    assert (
        score_sample("niah_multivalue", "1111111, 2222222", ["1111111", "2222222", "3333333", "4444444"])
        == 50.0
    )
    assert score_sample("vt", " ABCDE FGHIJ", ("ABCDE", "FGHIJ")) == 100.0
    assert score_sample("passkey", " 54321.", ("54321",)) == 100.0
    assert score_sample("niah_single_1_lmeval", " 7654321", ["1234567"]) == 0.0
    # qa: string_match_part.
    assert score_sample("qa_1", "Denver Broncos", ["Denver Broncos", "The Broncos", "Broncos win"]) == 100.0
    assert score_sample("qa_2", "no idea", ["Paris"]) == 0.0
    # A bare string counts as one reference.
    assert score_sample("niah_single_1", "it is 1234567", "1234567") == 100.0
    for task in TASKS:
        assert score_sample(task, "abc", ["abc"]) == 100.0


def test_score_sample_matches_batch_scorers():
    preds = ["one 1", "two", "three 3 4"]
    refs = [["1", "x"], ["2"], ["3", "4"]]
    per = [score_sample("cwe", p, r) for p, r in zip(preds, refs)]
    assert sum(per) / len(per) == pytest.approx(string_match_all(preds, refs))
    per = [score_sample("qa_1", p, r) for p, r in zip(preds, refs)]
    assert sum(per) / len(per) == pytest.approx(string_match_part(preds, refs))


def test_postprocess_pred():
    assert postprocess_pred("  12\x0034\t56 \n") == "12\n34\n56"
    # A reference cut by a control character no longer matches, as in RULER.
    assert score_sample("niah_single_1", "12\x0134567", ["1234567"]) == 0.0


def test_score_sample_unknown_task():
    with pytest.raises(ValueError, match="unknown RULER task"):
        score_sample("nope", "x", ["x"])
