"""Linearization (attention transfer + LoRA), its checkpoints, resume, data loading and perplexity.

Tiny random Llama + a byte-level stand-in tokenizer: fast, and independent of the embedded model.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from lola_bench.attention.common import LolaParams
from lola_bench.attention.config import LolaConfig
from lola_bench.attention.feature_maps import make_feature_map
from lola_bench.attention.hybrid import chunked_hybrid_attention, hybrid_attention
from lola_bench.attention.scorers import make_scorer
from lola_bench.data import text_data
from lola_bench.data.text_data import check_allowed, load_packed, read_sources
from lola_bench.errors import UserError
from lola_bench.evals.perplexity import perplexity
from lola_bench.models.checkpoint import map_lolcats_names
from lola_bench.models.checkpoint_load import load_lola_checkpoint
from lola_bench.models.linearize import LinearizeSettings, linearize
from lola_bench.models.loading import LoadedModel, random_model
from lola_bench.models.patch import lola_modules, patch_model, unpatch_model
from lola_bench.models.transfer import teacher_mode

SEQ = 64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny ops: one thread is far faster than two on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class ByteTokenizer:
    """Stand-in tokenizer: UTF-8 bytes + 1, EOS = 0."""
    eos_token_id = 0

    def __call__(self, texts, add_special_tokens=False, verbose=True):
        if isinstance(texts, str):
            return {"input_ids": [b + 1 for b in texts.encode()]}
        return {"input_ids": [[b + 1 for b in t.encode()] for t in texts]}


def tiny(seed=0, **overrides):
    """Tiny random Llama with sharpened q/k so attention is peaked (otherwise it is nearly uniform)."""
    m = random_model("tiny", seed=seed, **overrides)
    with torch.no_grad():
        for layer in m.model.layers:
            layer.self_attn.q_proj.weight.mul_(20)
            layer.self_attn.k_proj.weight.mul_(20)
    return m


def loaded(model=None):
    return LoadedModel(model if model is not None else tiny(), ByteTokenizer(), "random:tiny", "random weights",
                       "random", "cpu", "float32")


@pytest.fixture
def corpus(tmp_path):
    """A .txt file of 8 documents: 12+ sequences of SEQ byte tokens."""
    p = tmp_path / "corpus.txt"
    docs = [f"Document {i}: " + " ".join(f"word{(i * 7 + j) % 50}" for j in range(20)) for i in range(8)]
    p.write_text("\n\n".join(docs))
    return p


def run(out, data, **kw):
    args = dict(tokens=6 * SEQ, seq_len=SEQ, window=8, checkpoint_every=2)
    args.update(kw)
    lm = args.pop("lm", None) or loaded()
    return linearize(lm, [str(data)], out=out, **args)


def lola_tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path / "lola.safetensors"))


# ---- attention transfer ---------------------------------------------------------------------------------------

def test_chunked_hybrid_matches_dense_hybrid():
    torch.manual_seed(1)
    for window, chunk, combine, L, sinks in [(8, None, "lolcats", 40, 0), (5, 3, "gated", 29, 0),
                                             (8, None, "calibrated", 40, 3), (5, 3, "gated", 29, 6)]:
        cfg = LolaConfig(window=window, chunk=chunk, sparse=0, feature_map="hedgehog", combine=combine, sinks=sinks)
        fq, fk = make_feature_map("hedgehog", 4, 16), make_feature_map("hedgehog", 4, 16)
        fq.layer.data += 0.1 * torch.randn_like(fq.layer)
        wf = torch.nn.Parameter(torch.randn(4))
        p = LolaParams(cfg, fq, fk, wf, make_scorer("sre"), 4, 2, 16)
        q, k, v = 2 * torch.randn(1, 4, L, 16), 2 * torch.randn(1, 2, L, 16), torch.randn(1, 2, L, 16)
        results = []
        with torch.enable_grad():
            for fn in (hybrid_attention, chunked_hybrid_attention):
                for t in (wf, fq.layer, fk.layer):
                    t.grad = None
                out = fn(q, k, v, p)
                out.square().mean().backward()
                results.append((out.detach(), wf.grad.clone(), fq.layer.grad.clone(), fk.layer.grad.clone()))
        for a, b in zip(*results):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_teacher_mode_is_exact_softmax_attention():
    m = tiny()
    x = torch.randint(1, 200, (1, 48))
    ref = m(input_ids=x).logits
    patch_model(m, LolaConfig(window=8, sparse=0, feature_map="hedgehog", combine="lolcats"))
    with teacher_mode(m) as store:
        got = m(input_ids=x).logits
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert sorted(store) == [0, 1] and store[0][0].shape == (1, 4, 48, 16) and store[0][1].shape == (1, 2, 48, 16)


@pytest.mark.parametrize("combine,fall", [("lolcats", 0.75), ("calibrated", 0.98)])
def test_attention_transfer_loss_falls(tmp_path, combine, fall):
    """(On this random tiny model the calibrated formula starts nearer its optimum and falls more slowly.)"""
    data = tmp_path / "one.txt"
    data.write_text("The quick brown fox jumps over the lazy dog again and again, said the cat.")  # one sequence
    s = run(tmp_path / "out", data, tokens=12 * SEQ, combine=combine)
    curve = [v for _, v in s["loss_history"]["curve"]]
    assert len(curve) == 12 and curve[-1] < fall * curve[0]
    assert all(b < a for a, b in zip(curve, curve[1:]))  # the same batch every step: falls monotonically
    assert all(f < i for f, i in zip(s["final_layer_losses"], s["initial_layer_losses"]))
    assert (tmp_path / "out" / "loss.png").stat().st_size > 1000


def test_only_feature_maps_and_window_factors_train(tmp_path, corpus):
    lm = loaded()
    before = {n: p.clone() for n, p in lm.model.named_parameters()}
    run(tmp_path / "out", corpus, tokens=2 * SEQ, lm=lm)
    for n, p in lm.model.named_parameters():
        if n in before:
            assert torch.equal(p, before[n]), n
    mod = lola_modules(lm.model)[0]
    assert not torch.equal(mod.feature_map_q.layer, torch.eye(16).expand(4, 16, 16))
    assert not torch.allclose(mod.window_factors, torch.full((4,), mod.cfg.factor_init))


def test_patched_training_forward_is_differentiable_and_matches_inference():
    m = tiny()
    patch_model(m, LolaConfig(window=8, sparse=0, feature_map="hedgehog", combine="lolcats"))
    x = torch.randint(1, 200, (1, 40))
    ref = m(input_ids=x).logits
    m.train()
    with torch.enable_grad():
        out = m(input_ids=x, labels=x)
        out.loss.backward()
    m.eval()
    torch.testing.assert_close(out.logits.detach(), ref, rtol=1e-4, atol=1e-4)
    assert m.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


# ---- checkpoints ----------------------------------------------------------------------------------------------

def test_checkpoint_round_trip_with_lora(tmp_path, corpus):
    out = tmp_path / "ck"
    lm = loaded()
    s = run(out, corpus, tokens=2 * SEQ, lora_rank=2, lora_tokens=2 * SEQ, lora_lr=1e-2, lm=lm)
    meta = json.loads((out / "lola.json").read_text())
    assert meta["feature_map"] == "hedgehog" and meta["window"] == 8 and meta["steps"] == 2
    assert meta["lora"]["rank"] == 2 and meta["lora"]["steps"] == 2 and len(meta["final_layer_losses"]) == 2
    assert meta["data"]["sources"][0]["sha256"] == text_data.file_sha256(corpus)
    assert "git" in meta["provenance"] and s["complete"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()

    fresh = tiny()
    patch_model(fresh, LolaConfig(window=8, sparse=0, feature_map="hedgehog", combine=meta["combine"]))
    info = load_lola_checkpoint(fresh, out)
    assert info["feature_map"] == "hedgehog" and info["steps"] == 2
    for a, b in zip(lola_modules(lm.model), lola_modules(fresh)):
        assert torch.equal(a.feature_map_q.layer, b.feature_map_q.layer)
        assert torch.equal(a.feature_map_k.layer, b.feature_map_k.layer)
        assert torch.equal(a.window_factors, b.window_factors)
        assert b.q_proj.lora_B["default"].weight.abs().sum() > 0  # the adapter was trained and re-attached
    x = torch.randint(1, 200, (1, 50))
    torch.testing.assert_close(fresh(input_ids=x).logits, lm.model(input_ids=x).logits, rtol=0, atol=0)


def lolcats_state():
    """A state dict in LoLCATs' naming (peft-wrapped model, Hedgehog ``.mlp.layer``, (1, H, 1, 1) factors). LoRA
    entries and the published layouts are covered in test_checkpoints.py."""
    g = torch.Generator().manual_seed(3)
    state = {}
    for i in range(2):
        pre = f"base_model.model.model.layers.{i}.self_attn."
        state[pre + "feature_map_q.mlp.layer"] = torch.randn(4, 16, 16, generator=g)
        state[pre + "feature_map_k.mlp.layer"] = torch.randn(4, 16, 16, generator=g)
        state[pre + "window_factors"] = torch.randn(1, 4, 1, 1, generator=g)
    return state


def test_lolcats_names_are_mapped():
    state = lolcats_state()
    mapped = map_lolcats_names(state)
    assert set(mapped) == {f"model.layers.{i}.self_attn.{n}" for i in range(2)
                           for n in ("feature_map_q.layer", "feature_map_k.layer", "window_factors")}
    pre = "base_model.model.model.layers.1.self_attn."
    assert torch.equal(mapped["model.layers.1.self_attn.window_factors"], state[pre + "window_factors"].reshape(-1))
    assert torch.equal(mapped["model.layers.1.self_attn.feature_map_q.layer"], state[pre + "feature_map_q.mlp.layer"])


def test_lolcats_checkpoint_file_loads(tmp_path):
    m = tiny()
    patch_model(m, LolaConfig(window=8, sparse=0, feature_map="hedgehog"))
    state = lolcats_state()
    torch.save(state, tmp_path / "lolcats.pt")
    load_lola_checkpoint(m, tmp_path / "lolcats.pt")
    mod = lola_modules(m)[1]
    pre = "base_model.model.model.layers.1.self_attn."
    assert torch.equal(mod.feature_map_k.layer, state[pre + "feature_map_k.mlp.layer"])
    assert torch.equal(mod.window_factors, state[pre + "window_factors"].reshape(-1))


def test_bad_checkpoints_give_user_errors(tmp_path, corpus):
    out = tmp_path / "ck"
    run(out, corpus, tokens=SEQ)
    for overrides, match in (({"num_attention_heads": 8}, "heads"), ({"head_dim": 8}, "head_dim")):
        other = tiny(**overrides)
        patch_model(other, LolaConfig(window=8, sparse=0, feature_map="hedgehog"))
        with pytest.raises(UserError, match=match):
            load_lola_checkpoint(other, out)
    m = tiny()
    patch_model(m, LolaConfig(window=8, sparse=0, feature_map="hedgehog"))
    (out / "lola.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UserError, match="corrupt"):
        load_lola_checkpoint(m, out)
    (out / "train_state" / "state.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="corrupt training state"):
        run(out, corpus, tokens=SEQ)


# ---- resume -----------------------------------------------------------------------------------------------------

def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path, corpus):
    straight = run(tmp_path / "a", corpus)
    assert straight["complete"] and straight["steps"] == 6

    class Killed(Exception):
        pass

    def kill_at_3(step, total, tokens, loss, tps):
        assert total == 6 and tokens == step * SEQ and tps > 0
        if step == 3:
            raise Killed  # dies after step 3: the last train state is from step 2

    with pytest.raises(Killed):
        run(tmp_path / "b", corpus, progress=kill_at_3)
    assert json.loads((tmp_path / "b" / "train_state" / "progress.json").read_text())["step"] == 2
    part = run(tmp_path / "b", corpus, max_steps=2)  # steps 3 and 4, then stops with the state saved
    assert not part["complete"] and part["step"] == 4
    resumed = run(tmp_path / "b", corpus)
    assert resumed["complete"] and resumed["loss_history"] == straight["loss_history"]
    a, b = lola_tensors(tmp_path / "a"), lola_tensors(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match="different settings"):
        run(tmp_path / "b", corpus, lr=1e-3)


def test_token_budget_can_change_between_resumes(tmp_path, corpus):
    """Stage 1 only: stop early with a smaller budget, or train on from a finished run with a larger one."""
    straight = run(tmp_path / "a", corpus)  # 6 steps
    short = run(tmp_path / "b", corpus, tokens=3 * SEQ)
    assert short["complete"] and short["steps"] == 3 and short["tokens"] == 3 * SEQ
    longer = run(tmp_path / "b", corpus)  # the default budget: 3 more steps from the saved state
    assert longer["complete"] and longer["loss_history"] == straight["loss_history"]


def test_resume_across_the_lora_stage(tmp_path, corpus):
    kw = dict(tokens=2 * SEQ, lora_rank=2, lora_tokens=2 * SEQ, lora_lr=1e-2)
    straight = run(tmp_path / "a", corpus, **kw)
    part = run(tmp_path / "b", corpus, max_steps=2, **kw)  # stops exactly at the stage boundary
    assert not part["complete"] and part["step"] == 2
    part = run(tmp_path / "b", corpus, max_steps=1, **kw)  # one LoRA step, state saved in stage 2
    assert part["step"] == 3
    resumed = run(tmp_path / "b", corpus, **kw)
    assert resumed["lora"]["lm_loss_history"] == straight["lora"]["lm_loss_history"]
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / d / "adapter" / "adapter_model.safetensors")) for d in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- data -------------------------------------------------------------------------------------------------------

def test_refuses_paul_graham_essays_and_the_perplexity_split(tmp_path):
    for bad in ("/data/ruler_essay/PaulGrahamEssays.json", "/data/pg_essays", "/x/PG_ESSAYS/a.txt",
                "/data/text/wikitext-2-raw-wiki.test.raw"):
        with pytest.raises(UserError, match="refusing"):
            check_allowed(bad)
    d = tmp_path / "pg_essays"
    d.mkdir()
    (d / "a.txt").write_text("essay")
    with pytest.raises(UserError, match="RULER haystack"):
        load_packed([str(tmp_path)], ByteTokenizer(), 8)
    with pytest.raises(UserError, match="RULER haystack"):
        linearize(loaded(), [str(d / "a.txt")], tokens=SEQ, seq_len=SEQ, out=tmp_path / "o")


def test_data_formats(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("first doc\nstill first\n\n  \nsecond doc\n")
    (tmp_path / "lines.txt").write_text("article one\narticle two\narticle three\n")
    (tmp_path / "w.train.raw").write_bytes(b" = Alpha = \r\n\r\n Alpha text . \r\n = = Sub = = \r\n more . \r\n"
                                           b" = Beta = \r\n Beta text . \r\n")
    rows = [{"text": "plain jsonl"}, {"instruction": "Add.", "input": "1+1", "output": "2"}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "alpaca.json").write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi!"}]))
    docs = {s.path.rsplit("/", 1)[1]: (s, d) for s, d in read_sources([str(tmp_path)])}
    assert docs["a.txt"][1] == ["first doc\nstill first", "second doc"]
    assert docs["lines.txt"][1] == ["article one", "article two", "article three"]
    raw = docs["w.train.raw"][1]
    assert len(raw) == 2 and raw[0].startswith("= Alpha =") and "= = Sub = =" in raw[0] and "\r" not in raw[0]
    assert docs["c.jsonl"][1][0] == "plain jsonl" and "### Input:\n1+1" in docs["c.jsonl"][1][1]
    only = docs["alpaca.json"][1][0]
    assert "### Instruction:\nSay hi." in only and only.endswith("### Response:\nHi!") and "### Input" not in only
    assert docs["alpaca.json"][0].sha256 == text_data.file_sha256(tmp_path / "alpaca.json")

    tok = ByteTokenizer()
    packed = load_packed([str(tmp_path / "lines.txt")], tok, seq_len=5, seed=0)
    stream = [b + 1 for b in b"article one"] + [0] + [b + 1 for b in b"article two"] + [0]
    assert packed.chunks.flatten()[:len(stream)].tolist() == stream  # EOS after every document
    assert packed.num_sequences == (12 + 12 + 14) // 5  # the tail remainder is dropped
    again = load_packed([str(tmp_path / "lines.txt")], tok, seq_len=5, seed=0)
    other = load_packed([str(tmp_path / "lines.txt")], tok, seq_len=5, seed=1)
    n = packed.num_sequences
    assert torch.equal(packed.batch(0, n), again.batch(0, n))
    assert not torch.equal(packed.batch(0, n), other.batch(0, n))
    assert sorted(packed.batch(0, n).tolist()) == sorted(packed.chunks.tolist())  # one epoch = a permutation
    assert not torch.equal(packed.batch(0, n), packed.batch(n, n))  # the next epoch is reshuffled

    (tmp_path / "bad.jsonl").write_text('{"title": "no text"}\n')
    with pytest.raises(UserError, match="bad.jsonl:1"):
        read_sources([str(tmp_path / "bad.jsonl")])
    with pytest.raises(UserError, match="fewer than one sequence"):
        load_packed([str(tmp_path / "alpaca.json")], tok, seq_len=4096)
    with pytest.raises(UserError, match="not found"):
        read_sources([str(tmp_path / "missing.txt")])
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError, match="internet"):
        read_sources(["someorg/somedataset"])


def test_settings_validation_and_dict():
    s = LinearizeSettings(data_paths="x.txt", tokens=3000, seq_len=1024, lora_rank=8)
    d = s.to_dict()
    assert d["data_paths"] == ["x.txt"] and d["stage1_steps"] == 3 and d["stage2_steps"] == 3
    assert s.combine == "calibrated" and s.window_factor_init == 3.5
    lolcats = LinearizeSettings(data_paths="x.txt", tokens=3000, combine="lolcats")
    assert math.isclose(1 / (1 + math.exp(-lolcats.window_factor_init)), 0.1)  # LoLCATs' window_factor init
    assert "checkpoint_every" not in s.resume_key()
    for bad in ({"tokens": 0}, {"feature_map": "nope"}, {"combine": "x"}, {"lora_rank": -1}, {"window": 0}):
        with pytest.raises(UserError):
            LinearizeSettings(**{"data_paths": ["x.txt"], "tokens": 10, **bad})


# ---- perplexity -------------------------------------------------------------------------------------------------

def test_perplexity_matches_a_direct_computation(tmp_path):
    text = "Hello there. This is a tiny held-out text for perplexity.\r\nSecond line here.\r\n"
    (tmp_path / "t.raw").write_text(text, newline="")
    m, tok = tiny(), ByteTokenizer()
    ids = torch.tensor([tok(text.replace("\r\n", "\n"))["input_ids"]])
    nll, count = 0.0, 0
    for i in range(0, ids.shape[1], 32):
        x = ids[:, i:i + 32]
        nll += F.cross_entropy(m(input_ids=x).logits[0, :-1], x[0, 1:], reduction="sum").item()
        count += x.shape[1] - 1
    ppl = perplexity(m, tok, tmp_path / "t.raw", seq_len=32)
    assert math.isclose(ppl, math.exp(nll / count), rel_tol=1e-5)
    patch_model(m, LolaConfig(window=8, sparse=4, feature_map="hedgehog-identity"))
    lola_ppl = perplexity(m, tok, tmp_path / "t.raw", seq_len=32, max_tokens=40)
    assert math.isfinite(lola_ppl) and lola_ppl > 1
    unpatch_model(m)


def test_sinks_are_trained_recorded_and_used_by_default(tmp_path, corpus):
    """--sinks: distillation keeps the first positions exact, the checkpoint records it, and commands default to it."""
    from lola_bench.models.checkpoint import read_meta
    from lola_bench.settings import LolaFlags, lola_config

    out = tmp_path / "ck"
    lm = loaded()
    s = run(out, corpus, tokens=2 * SEQ, sinks=3, lm=lm)
    meta = json.loads((out / "lola.json").read_text())
    assert meta["sinks"] == 3 and meta["lola_config"]["sinks"] == 3 and s["complete"]
    assert all(m.cfg.sinks == 3 for m in lola_modules(lm.model))
    cfg = lola_config(LolaFlags(window=8, sparse=16), "hedgehog", read_meta(str(out)))
    assert cfg.sinks == 3 and cfg.exact_len == lola_config(LolaFlags(window=8, sparse=19), "hedgehog", None).exact_len
    assert lola_config(LolaFlags(window=8, sparse=16, sinks=0), "hedgehog", read_meta(str(out))).sinks == 0
    # a sink-trained checkpoint differs from one trained without sinks on the same data
    ref = tmp_path / "ck0"
    run(ref, corpus, tokens=2 * SEQ)
    a, b = lola_tensors(out), lola_tensors(ref)
    assert a.keys() == b.keys() and any(not torch.equal(a[n], b[n]) for n in a)


def test_calibration_picks_the_offset_with_the_lowest_tail_loss(tmp_path, corpus):
    """The stored factors are the trained ones minus the chosen offset; the offset is the argmin of the recorded
    tail perplexities, each of which matches a direct computation; the patched config is restored."""
    from lola_bench.data.text_data import load_packed
    from lola_bench.models.calibration import calibrate_linear_weight
    from lola_bench.models.patch import new_cache

    lm = loaded()
    run(tmp_path / "ck", corpus, tokens=2 * SEQ, sinks=1, lm=lm)
    mods = lola_modules(lm.model)
    trained = [m.window_factors.detach().clone() for m in mods]
    for m in mods:
        m.window_factors.requires_grad_(True)  # as a training run leaves them
    grid = (0.0, 1.0, -1.0, 3.0)
    with torch.enable_grad():  # as in a real run (the suite runs under no_grad)
        cal = calibrate_linear_weight(lm, load_packed((str(corpus),), lm.tokenizer, SEQ, 0), sparse=0, sequences=2,
                                      tail=0.5, grid=grid)
    curve = cal["tail_perplexity"]
    assert len(curve) == 4 and max(curve) > min(curve) * 1.0001  # the linear memory is in play (sparse = 0)
    assert cal["offset"] == grid[min(range(4), key=lambda i: curve[i])]
    for m, t in zip(mods, trained):
        torch.testing.assert_close(m.window_factors.detach(), t - cal["offset"])
        assert m.cfg.sparse == 0 and m.cfg.sinks == 1
    # one point of the curve, recomputed by hand
    data = load_packed((str(corpus),), lm.tokenizer, SEQ, 0)
    seqs = [data.sequence(data.num_sequences - 1 - i) for i in range(2)]
    with torch.no_grad():
        for m, t in zip(mods, trained):
            m.window_factors.copy_(t - 3.0)
        nll = n = 0
        for x in seqs:
            lg = lm.model(input_ids=x.view(1, -1), cache=new_cache(lm.model), use_cache=True).logits[0]
            lg = lg[SEQ // 2 - 1:-1]
            nll += torch.nn.functional.cross_entropy(lg, x[SEQ // 2:], reduction="sum").item()
            n += lg.shape[0]
    assert math.isclose(math.exp(nll / n), curve[3], rel_tol=1e-5)


def test_linearize_calibrate_records_the_offset(tmp_path, corpus):
    """Rerunning a finished linearize with calibrate=True calibrates from the trained state and records it."""
    out = tmp_path / "ck"
    run(out, corpus, tokens=2 * SEQ, sinks=1)
    trained = lola_tensors(out)
    s = run(out, corpus, tokens=2 * SEQ, sinks=1, calibrate=True)
    cal = s["linear_weight_calibration"]
    assert cal["sparse"] == 512 and cal["sinks"] == 1 and json.loads((out / "lola.json").read_text())[
        "linear_weight_calibration"] == cal
    after = lola_tensors(out)
    for name, t in trained.items():
        want = t - cal["offset"] if name.endswith("window_factors") else t
        torch.testing.assert_close(after[name], want)
