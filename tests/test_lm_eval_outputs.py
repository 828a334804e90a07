"""Issue #23, lm-eval conventions: lm-eval's results file per variant under the official task names, --log-samples'
per-sample files, any lm-eval task name online, and the embedded model's hub id running the shipped copy."""

import json

import pytest
from typer.testing import CliRunner

from lola_bench.cli import app
from lola_bench.evals.commonsense.lm_eval_format import official_results, sample_lines
from tests.evals.test_commonsense import DATA, needs_data

runner = CliRunner()


def _local_result():
    """An lm-eval result as the local (offline) YAMLs name it: a task, and a group with a subgroup and a subtask."""
    return {
        "results": {"lola_piqa": {"name": "lola_piqa", "alias": "lola_piqa", "acc,none": 0.5},
                    "lola_mmlu_anatomy": {"name": "lola_mmlu_anatomy", "alias": "  - lola_mmlu_anatomy",
                                          "acc,none": 0.25}},
        "groups": {"lola_mmlu": {"name": "lola_mmlu", "alias": "lola_mmlu", "acc,none": 0.3},
                   "lola_mmlu_stem": {"name": "lola_mmlu_stem", "alias": " - lola_mmlu_stem", "acc,none": 0.2}},
        "group_subtasks": {"lola_mmlu": ["lola_mmlu_stem"], "lola_mmlu_stem": ["lola_mmlu_anatomy"],
                           "lola_piqa": []},
        "configs": {"lola_piqa": {"task": "lola_piqa", "dataset_path": "/x/lola_bench/data"}},
        "versions": {"lola_piqa": 1.0}, "n-shot": {"lola_piqa": 0}, "higher_is_better": {"lola_piqa": {"acc": True}},
        "n-samples": {"lola_piqa": {"original": 1838, "effective": 2}},
        "samples": {"lola_piqa": [{"doc_id": 0, "arguments": [["ctx", " a"], ["ctx", " b"]],
                                   "resps": [[[-1.5, False]], [[-2.0, True]]],
                                   "filtered_resps": [[-1.5, False], [-2.0, True]], "target": 0, "acc": 1.0}]},
        "lola_bench": {"tasks": {"piqa": "lola_piqa"}},
        "date": 1.0,
    }


def test_official_results_use_lm_evals_task_names_everywhere():
    res, samples = official_results(_local_result())
    assert res["results"]["piqa"]["acc,none"] == 0.5                     # what code reading lm-eval files does
    assert res["results"]["piqa"]["name"] == "piqa" and res["results"]["piqa"]["alias"] == "piqa"
    assert res["results"]["mmlu_anatomy"]["alias"] == "  - mmlu_anatomy"
    assert set(res["groups"]) == {"mmlu", "mmlu_stem"} and res["groups"]["mmlu_stem"]["alias"] == " - mmlu_stem"
    assert res["group_subtasks"] == {"mmlu": ["mmlu_stem"], "mmlu_stem": ["mmlu_anatomy"], "piqa": []}
    assert res["configs"]["piqa"]["task"] == "piqa"
    assert res["configs"]["piqa"]["dataset_path"] == "/x/lola_bench/data", "only task names are renamed"
    assert set(res["versions"]) == set(res["n-shot"]) == set(res["n-samples"]) == {"piqa"}
    assert "samples" not in res and list(samples) == ["piqa"]
    assert res["lola_bench"] == {"tasks": {"piqa": "lola_piqa"}}, "our provenance keeps the local name"
    already = official_results(res)[0]
    assert already == res, "official names pass through"


def test_sample_lines_are_lm_evals_log_samples_records():
    _, samples = official_results(_local_result())
    (line,) = sample_lines(samples["piqa"]).splitlines()
    rec = json.loads(line)
    assert rec["arguments"] == {"gen_args_0": {"arg_0": "ctx", "arg_1": " a"},
                                "gen_args_1": {"arg_0": "ctx", "arg_1": " b"}}
    assert rec["resps"] == [[["-1.5", "False"]], [["-2.0", "True"]]]
    assert rec["filtered_resps"] == [["-1.5", "False"], ["-2.0", "True"]]
    assert rec["target"] == "0" and rec["doc_id"] == 0 and rec["acc"] == 1.0


@needs_data
def test_commonsense_writes_lm_eval_results_and_samples_per_variant(tmp_path):
    out = tmp_path / "cs"
    r = runner.invoke(app, ["commonsense", "--model", "random:tiny", "--attn", "full,lola", "--window", "8",
                            "--lambda", "8", "--tasks", "piqa", "--limit", "2", "--data-dir", str(DATA),
                            "--log-samples", "--out", str(out)])
    assert r.exit_code == 0, r.output
    for variant in ("full", "lola"):
        res = json.loads((out / "lm_eval" / variant / "results.json").read_text())
        assert set(res["results"]) == {"piqa"} and 0 <= res["results"]["piqa"]["acc,none"] <= 1
        assert res["n-samples"]["piqa"]["effective"] == 2 and res["model_name"] == "random:tiny"
        lines = (out / "lm_eval" / variant / "samples_piqa.jsonl").read_text().splitlines()
        recs = [json.loads(x) for x in lines]
        assert [x["doc_id"] for x in recs] == [0, 1] and all("gen_args_1" in x["arguments"] for x in recs)
    combined = json.loads((out / "lm_eval_results.json").read_text())
    assert set(combined) == {"full", "lola"} and "piqa" in combined["lola"]["results"]
    assert "samples" not in combined["lola"]
    assert (out / "summary.csv").is_file(), "our own summary stays"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["commonsense"]["log_samples"] is True


@needs_data
def test_without_log_samples_no_sample_files(tmp_path):
    out = tmp_path / "cs"
    r = runner.invoke(app, ["commonsense", "--model", "random:tiny", "--attn", "full", "--tasks", "piqa",
                            "--limit", "1", "--data-dir", str(DATA), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert [p.name for p in (out / "lm_eval" / "full").iterdir()] == ["results.json"]


def test_online_unknown_lm_eval_task_is_one_line_before_loading(tmp_path, monkeypatch):
    import lola_bench.evals.commonsense.tasks as tasks_mod
    import lola_bench.models.loading as loading

    monkeypatch.setattr(tasks_mod, "_LM_EVAL_NAMES", frozenset({"boolq", "piqa"}))
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    r = runner.invoke(app, ["commonsense", "--model", "random:tiny", "--online", "--tasks", "boolq,nope",
                            "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "unknown lm-eval task(s) 'nope'" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_online_accepts_any_lm_eval_task(tmp_path, monkeypatch):
    """boolq is not one of the six offline tasks, but lm-eval knows it: accepted online (the run is stubbed)."""
    import lola_bench.evals.commonsense.tasks as tasks_mod
    import lola_bench.models.loading as loading

    class Loaded(Exception):
        pass

    def stop(*a, **k):
        raise Loaded

    monkeypatch.setattr(tasks_mod, "_LM_EVAL_NAMES", frozenset({"boolq"}))
    monkeypatch.setattr(loading, "load_model", stop)
    r = runner.invoke(app, ["commonsense", "--model", "random:tiny", "--online", "--tasks", "boolq", "--out",
                            str(tmp_path / "x")])
    assert isinstance(r.exception, Loaded), r.output
    r = runner.invoke(app, ["commonsense", "--model", "random:tiny", "--data-dir", str(tmp_path), "--tasks", "boolq",
                            "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "--online" in r.output, r.output


def test_hub_id_of_the_embedded_model_runs_the_shipped_copy(monkeypatch):
    from lola_bench.models import aliases

    monkeypatch.setattr(aliases, "hub_cached", lambda repo: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec, note = aliases.resolve_alias("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert spec == "smollm2-135m" and "HF_HUB_OFFLINE=1" in note and "embedded copy" in note
    assert aliases.resolve_alias("HuggingFaceTB/SmolLM2-360M") == ("HuggingFaceTB/SmolLM2-360M", None)
    monkeypatch.setattr(aliases, "hub_cached", lambda repo: True)
    assert aliases.resolve_alias("HuggingFaceTB/SmolLM2-135M-Instruct") == ("HuggingFaceTB/SmolLM2-135M-Instruct",
                                                                            None)


@pytest.mark.parametrize("reachable", [True, False])
def test_hub_id_online_loads_the_hub_weights(monkeypatch, reachable):
    """Not cached and not HF_HUB_OFFLINE: the hub's weights when the hub answers (a user online gets the model they
    named), the embedded copy with a notice when it does not."""
    from lola_bench.models import aliases

    monkeypatch.setattr(aliases, "hub_cached", lambda repo: False)
    monkeypatch.setattr(aliases, "hub_reachable", lambda: reachable)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    spec, note = aliases.resolve_alias("HuggingFaceTB/SmolLM2-135M-Instruct")
    if reachable:
        assert (spec, note) == ("HuggingFaceTB/SmolLM2-135M-Instruct", None)
    else:
        assert spec == "smollm2-135m" and "cannot be reached" in note


def test_hub_id_under_a_launcher_never_probes(monkeypatch):
    """Data-parallel ranks probe nothing (one rank's timeout would give it another model than the others): the
    choice depends only on the cache and HF_HUB_OFFLINE, the same on every rank."""
    from lola_bench.models import aliases

    monkeypatch.setattr(aliases, "hub_cached", lambda repo: False)
    monkeypatch.setattr(aliases, "hub_reachable", lambda: pytest.fail("probed under a launcher"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert aliases.resolve_alias("HuggingFaceTB/SmolLM2-135M-Instruct") == ("HuggingFaceTB/SmolLM2-135M-Instruct",
                                                                            None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert aliases.resolve_alias("HuggingFaceTB/SmolLM2-135M-Instruct")[0] == "smollm2-135m"


def test_hub_reachable_probes_the_endpoint(monkeypatch):
    from lola_bench.models import aliases

    seen = []

    def connect(addr, timeout):
        seen.append(addr)
        raise OSError("unreachable")

    monkeypatch.setattr(aliases.socket, "create_connection", connect)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.org:8443")
    aliases.hub_reachable.cache_clear()
    try:
        assert aliases.hub_reachable() is False and seen == [("hub.example.org", 8443)]
    finally:
        aliases.hub_reachable.cache_clear()


def test_cli_says_the_hub_id_maps_to_the_embedded_model(tmp_path, monkeypatch):
    from lola_bench.models import aliases
    from lola_bench.models.gguf import embedded_available

    if not embedded_available():
        pytest.skip("embedded model not installed")
    monkeypatch.setattr(aliases, "hub_cached", lambda repo: False)
    monkeypatch.setattr(aliases, "hub_reachable", lambda: False)
    r = runner.invoke(app, ["ruler", "--model", "HuggingFaceTB/SmolLM2-135M-Instruct", "--ctx", "512", "--task",
                            "passkey", "--attn", "lola", "--dry-run", "--device", "cpu", "--out",
                            str(tmp_path / "x")])
    assert r.exit_code == 0, r.output
    assert "embedded copy runs instead" in r.output and "training-free" not in r.output.lower()
