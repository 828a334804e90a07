"""The Python API (README example runs as written), misuse errors, --threads and `lola-bench reproduce`."""

import json
import logging
import re
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import lola_bench
from lola_bench.attention.config import LolaConfig
from lola_bench.errors import UserError
from lola_bench.models.checkpoint import read_meta, shipped_checkpoint
from lola_bench.models.checkpoint_save import save_lola_checkpoint
from lola_bench.models.compat import check_checkpoint
from lola_bench.models.gguf import embedded_available
from lola_bench.models.loading import load_model
from lola_bench.models.patch import patch_model, unpatch_model
from lola_bench.models.variants import apply_attention
from lola_bench.settings import AttentionSettings, LolaFlags, lola_config_and_sources

README = Path(__file__).resolve().parents[1] / "README.md"
pytestmark = pytest.mark.skipif(not embedded_available(), reason="random:tiny uses the embedded tokenizer")


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_readme_python_example_runs(capsys):
    text = README.read_text()
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "16 32 None" in out and "passkey" in out and "chat_template" in out


@pytest.fixture(scope="module")
def tiny():
    return load_model("random:tiny", "cpu", "float32").model


def _ckpt(model, path, feature_map, **meta):
    patch_model(model, LolaConfig(window=16, sparse=0, feature_map=feature_map))
    try:
        return str(save_lola_checkpoint(model, path, {"feature_map": feature_map, **meta}))
    finally:
        unpatch_model(model)


def _attn(origin="", **cfg):
    return AttentionSettings.build("lola", LolaConfig(window=16, sparse=32, **cfg), "torch", origin)


def test_mismatched_sinks_and_combine_raise_naming_both(tiny, tmp_path):
    ck = _ckpt(tiny, tmp_path / "hh", "hedgehog", combine="calibrated", sinks=4)
    with pytest.raises(UserError, match=r"sinks 4 but the configuration sets sinks 0") as e:
        apply_attention(tiny, _attn(feature_map="hedgehog", combine="calibrated", sinks=0), ck)
    assert str(e.value).count(".") <= 2 and "\n" not in str(e.value)          # one sentence
    with pytest.raises(UserError, match=r"combine 'calibrated' but the configuration sets combine 'gated'"):
        apply_attention(tiny, _attn(feature_map="hedgehog", combine="gated", sinks=4), ck)
    apply_attention(tiny, _attn(feature_map="hedgehog", combine="calibrated", sinks=4), ck)    # matching: loads
    apply_attention(tiny, AttentionSettings("full"))


def test_mismatched_feature_map_raises_naming_both(tiny, tmp_path):
    ck = _ckpt(tiny, tmp_path / "elu", "elu")                 # window factors only, trained with elu
    with pytest.raises(UserError, match=r"feature_map 'elu' but the configuration sets feature_map 'relu'"):
        apply_attention(tiny, _attn(feature_map="relu"), ck)
    apply_attention(tiny, AttentionSettings("full"))


def test_explicit_flag_mismatch_warns_instead(tiny, tmp_path, caplog):
    ck = _ckpt(tiny, tmp_path / "hh", "hedgehog", combine="calibrated", sinks=4)
    with caplog.at_level(logging.WARNING, logger="lola_bench"):
        apply_attention(tiny, _attn("combine=default gqa=default chunk=default sinks=flag", feature_map="hedgehog",
                                    combine="calibrated", sinks=0), ck)
    apply_attention(tiny, AttentionSettings("full"))
    assert any("sinks 4" in r.getMessage() and "sinks 0" in r.getMessage() for r in caplog.records)


def test_preset_paper_on_the_shipped_checkpoint_warns_not_raises():
    ck = shipped_checkpoint("smollm2-135m")
    if ck is None:
        pytest.skip("no shipped checkpoint")
    meta = read_meta(ck)
    cfg, origin = lola_config_and_sources(LolaFlags(preset="paper"), "hedgehog", meta, str(ck))
    warnings = check_checkpoint(meta, cfg, origin=origin, ckpt=str(ck))
    assert any("combine 'calibrated'" in w and "'lola'" in w for w in warnings)
    cfg, origin = lola_config_and_sources(LolaFlags(), "hedgehog", meta, str(ck))   # defaults: no warning
    assert check_checkpoint(meta, cfg, origin=origin, ckpt=str(ck)) == []


def test_weights_into_a_training_free_map_raise(tiny, tmp_path):
    ck = _ckpt(tiny, tmp_path / "hh", "hedgehog", combine="calibrated", sinks=4)
    with pytest.raises(UserError, match=r"learned feature-map weights .*training-free feature map "
                                        r"'hedgehog-identity'"):
        apply_attention(tiny, _attn(feature_map="hedgehog-identity", combine="calibrated", sinks=4), ck)


def test_learned_map_without_weights_raises(tiny):
    with pytest.raises(UserError, match="'hedgehog' is learned but no checkpoint"):
        apply_attention(tiny, _attn(feature_map="hedgehog"), None)
    with pytest.raises(UserError, match="'hedgehog' is learned but no checkpoint"):
        lola_bench.load("random:tiny", feature_map="hedgehog", lola_ckpt="none")


def test_embedded_model_without_its_checkpoint_warns(monkeypatch, caplog):
    if shipped_checkpoint("smollm2-135m") is None:
        pytest.skip("no shipped checkpoint")
    import lola_bench.models.loading as loading

    tiny = loading.load_model("random:tiny", "cpu", "float32")
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: tiny)
    with caplog.at_level(logging.WARNING, logger="lola_bench"):
        lm = lola_bench.load("smollm2-135m", feature_map="elu", device="cpu")
    assert lm.checkpoint is None
    assert any("without its shipped checkpoint" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lola_bench"):
        lola_bench.load("smollm2-135m", feature_map="elu", lola_ckpt="none", device="cpu")
    assert not [r for r in caplog.records if "shipped checkpoint" in r.getMessage()]


def test_ruler_threads_recorded_and_reproduce_gives_identical_accuracy(tmp_path, monkeypatch):
    from lola_bench.cli import app

    args = ["ruler", "--model", "random:tiny", "--lola-ckpt", "none", "--ctx", "256", "--samples", "1", "--task",
            "passkey", "--attn", "full", "--attn", "lola", "--threads", "1", "--out", str(tmp_path / "a")]
    monkeypatch.setattr(sys, "argv", ["lola-bench", *args])
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["threads"] == 1 and cfg["provenance"]["device"]["threads"] == 1
    assert cfg["provenance"]["command"].startswith("lola-bench ruler")
    r = CliRunner().invoke(app, ["reproduce", str(tmp_path / "a"), "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert "exact columns identical: yes" in r.output
    import pandas as pd

    cmp = pd.read_csv(tmp_path / "b" / "reproduce.csv")
    acc = cmp[cmp["column"] == "accuracy"]
    assert len(acc) == 2 and (acc["difference"] == 0).all()
    assert (tmp_path / "b" / "reproduce.md").is_file()
    summary = pd.read_csv(tmp_path / "b" / "summary.csv")
    assert list(summary["chat_template"]) == [False, False]
    assert list(pd.read_csv(tmp_path / "a" / "summary.csv")["threads"]) == [1, 1]     # --threads, in every row
    new = json.loads((tmp_path / "b" / "config.json").read_text())
    assert new["ruler"] == cfg["ruler"] and new["attention"] == cfg["attention"]


def test_reproduce_keeps_the_prefill_head_of_runs_recorded_before_the_flag():
    """A ruler run recorded before --prefill-logits applied the output head to every prompt position: its rerun says
    --prefill-logits all; a run that records the setting reruns as recorded."""
    from lola_bench.reproduce import rerun_args

    old = {"command": "ruler", "ruler": {"samples": 1}, "provenance": {"command": "lola-bench ruler --ctx 256"}}
    assert rerun_args(old, "out")[-4:] == ["--prefill-logits", "all", "--out", "out"]
    new = {**old, "ruler": {"samples": 1, "prefill_logits": "last"}}
    assert "--prefill-logits" not in rerun_args(new, "out")
