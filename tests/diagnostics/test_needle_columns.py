"""Needle diagnostics on a random-weight model (random:tiny): a needle in the window is "window", everything is
exact when lambda covers the prompt, a needle far back with lambda = 0 is "folded"; the needle_kept rule; the
columns in a RULER run."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from lola_bench.attention.config import LolaConfig
from lola_bench.diagnostics.columns import NeedleProbe, needle_kept_share, sample_columns
from lola_bench.diagnostics.needle import LayerNeedle, needle_token_positions
from lola_bench.evals.timing import greedy_generate
from lola_bench.models.patch import patch_model, unpatch_model

KEY = "48213"


@pytest.fixture(scope="module")
def tiny():
    from lola_bench.models.loading import load_model

    return load_model("random:tiny", device="cpu", dtype="float32")


def _sample(tok, before: int, after: int):
    filler = "The grass is green. The sky is blue. "
    prompt = (filler * before + f"The pass key is {KEY}. Remember it. " + filler * after
              + "What is the pass key? The pass key is")
    ids = tuple(tok(prompt)["input_ids"])
    return SimpleNamespace(prompt=prompt, input_ids=ids, answers=(KEY,))


def _probe(tiny, cfg: LolaConfig, sample) -> dict:
    """The columns of one generation; the analysis ran once per layer, in hooks that are gone afterwards."""
    model = tiny.model
    patch_model(model, cfg, kernels="torch")
    try:
        with NeedleProbe(model, tiny.tokenizer, sample, "passkey") as probe:
            greedy_generate(model, torch.tensor([sample.input_ids]), 3, set())
        assert probe.seconds > 0 and sorted(probe._cap.layers) == [0, 1]
        assert not any(m._forward_hooks for m in model.modules())
        return probe.columns()
    finally:
        unpatch_model(model)


def test_positions_are_the_answer_tokens(tiny):
    s = _sample(tiny.tokenizer, 3, 2)
    pos = needle_token_positions(s.prompt, s.input_ids, s.answers, tiny.tokenizer)
    assert len(pos) == 1 and len(pos[0]) == 1                  # one answer, stated once
    assert tiny.tokenizer.decode([s.input_ids[i] for i in pos[0][0]]).strip() == KEY
    assert needle_token_positions(s.prompt, s.input_ids, ("99999",), tiny.tokenizer) is None
    assert needle_token_positions(s.prompt, s.input_ids[1:], s.answers, tiny.tokenizer) is None


def test_needle_in_the_window(tiny):
    c = _probe(tiny, LolaConfig(window=64, sparse=0), _sample(tiny.tokenizer, 30, 0))
    assert c["needle_where"] == ["window"] * len(c["needle_tokens"])
    assert c["needle_kept"] and all(x == 1 for x in c["needle_layer_heads"])
    assert all(m > 0 for m in c["needle_mass"])
    assert all(r is None for r in c["needle_rank_median"])      # never left the window


def test_lambda_covering_the_prompt_keeps_everything_exact(tiny):
    s = _sample(tiny.tokenizer, 2, 30)
    assert len(s.input_ids) < 1024
    c = _probe(tiny, LolaConfig(window=16, sparse=1024), s)
    assert c["needle_where"] == ["sparse"] * len(c["needle_tokens"])
    assert c["needle_kept"] and c["needle_kept_layers"] == 1
    assert all(x == 0 for x in c["linear_mass"])                 # nothing folded: no linear memory
    assert all(k == n for k, n in zip(c["needle_rank_keep"], c["needle_rank_candidates"]))
    assert needle_kept_share([c, c]) == 100.0


def test_lambda_zero_folds_a_needle_far_back(tiny):
    c = _probe(tiny, LolaConfig(window=16, sparse=0), _sample(tiny.tokenizer, 2, 30))
    assert c["needle_where"] == ["folded"] * len(c["needle_tokens"])
    assert not c["needle_kept"] and c["needle_kept_layers"] == 0
    assert all(m == 0 for m in c["needle_mass"]) and all(m > 0 for m in c["linear_mass"])
    assert all(m > 0 for m in c["needle_mass_full"])
    assert all(k == 0 and r >= 1 for k, r in zip(c["needle_rank_keep"], c["needle_rank_min"]))


def test_eviction_drops(tiny):
    c = _probe(tiny, LolaConfig(window=16, sparse=0, scorer="key_norm", fold=False), _sample(tiny.tokenizer, 2, 30))
    assert c["needle_where"] == ["dropped"] * len(c["needle_tokens"])
    assert all(x == 0 for x in c["linear_mass"])


@pytest.mark.parametrize("scorer", ["attention", "snapkv"])
@pytest.mark.parametrize("evict_at", ["boundary", "prompt_end"])
def test_mass_scorers_have_no_ranks(tiny, scorer, evict_at):
    """The attention-mass scorers cannot be replayed from keys and values: the diagnostics run without ranks (they
    used to fail); prompt_end's needle is kept when lambda covers the prompt."""
    s = _sample(tiny.tokenizer, 2, 30)
    c = _probe(tiny, LolaConfig(window=16, sparse=1024, scorer=scorer, fold=False, evict_at=evict_at), s)
    assert c["needle_where"] == ["sparse"] * len(c["needle_tokens"]) and c["needle_kept"]
    assert all(r is None for r in c["needle_rank_median"])


def test_prompt_end_ranks_come_from_the_one_compression(tiny):
    """key_norm after a full prefill: one selection among every position below the window start."""
    s = _sample(tiny.tokenizer, 2, 30)
    c = _probe(tiny, LolaConfig(window=16, sparse=0, scorer="key_norm", fold=False, evict_at="prompt_end"), s)
    assert c["needle_where"] == ["dropped"] * len(c["needle_tokens"])
    ws = LolaConfig(window=16).window_start(len(s.input_ids) // 16)
    assert all(n == ws and k == 0 for n, k in zip(c["needle_rank_candidates"], c["needle_rank_keep"]))


def _layer(tokens, window, by_head, mass=0.5):
    return LayerNeedle(tokens=tokens, in_window=window, sparse_by_head=by_head, ranks=None, needle=[mass, 0.0],
                       window=[0.2, 0.5], sparse=[0.1, 0.2], linear=[0.2, 0.3], full=[0.9, 0.1])


def test_kept_rule():
    """Exact in a layer: some storage head holds, for every answer, a whole statement of it; kept: exact in >= half
    the layers. Passkey's second statement of the key counts; tokens spread over different heads do not."""
    occ = [[[1, 2], [7, 8]]]                                   # one answer stated twice
    tok = [1, 2, 7, 8]
    no = [False] * 4
    one = _layer(tok, no, [[True, True, False, False], [False] * 4, [True, False, False, True]])  # head 0: statement 1
    second = _layer(tok, [False, False, True, True], [no, no, no])                               # statement 2 in window
    spread = _layer(tok, no, [[True, False, True, False], [False, True, False, True], no])  # no head holds a whole one
    c = sample_columns([one, spread, spread, second], occ)
    assert c["needle_layer_heads"] == [0.333, 0.0, 0.0, 1.0]
    assert c["needle_kept_layers"] == 0.5 and c["needle_kept"]
    c = sample_columns([one, spread, spread, spread], occ)
    assert c["needle_kept_layers"] == 0.25 and not c["needle_kept"]
    assert c["needle_where"] == ["mixed", "mixed", "mixed", "mixed"]
    assert c["needle_exact_share"] == [0.417, 0.333, 0.25, 0.333]   # mean over layers of the head share
    two = [[[1, 2]], [[7, 8]]]                                 # two answers: both must be held by the same head
    assert sample_columns([one], two)["needle_layer_heads"] == [0.0]
    assert sample_columns([_layer(tok, no, [[True] * 4, no, no])], two)["needle_layer_heads"] == [0.333]
    c = sample_columns([one], occ)
    assert c["needle_mass"] == [0.5] and c["linear_mass"] == [0.2]   # read in the head full attention reads with
    assert needle_kept_share([{"needle_kept": True}, {"needle_kept": False}, {}]) == 50.0
    assert needle_kept_share([{}]) is None


def test_ruler_run_has_the_columns(tiny):
    from lola_bench.evals.ruler_bench import RulerSettings, run_ruler
    from lola_bench.settings import FULL, AttentionSettings

    lola = AttentionSettings.build("lola", LolaConfig(window=16, sparse=32), "torch")
    rs = RulerSettings(tasks=("passkey",), ctxs=(384,), samples=2, warmup=False)
    out = run_ruler(tiny, [FULL, lola], rs)
    full_p = [p for p in out.predictions if p["attn"] == "full"]
    lola_p = [p for p in out.predictions if p["attn"] == "lola"]
    assert all("needle_where" not in p for p in full_p)
    assert all(isinstance(p["needle_kept"], bool) and len(p["needle_mass"]) == 2 for p in lola_p)
    row = out.summary.set_index("attn").loc["lola"]
    assert row["needle_kept"] == needle_kept_share(lola_p)
    assert pd.isna(out.summary.set_index("attn").loc["full", "needle_kept"])
    off = run_ruler(tiny, [lola], RulerSettings(tasks=("passkey",), ctxs=(384,), samples=1, warmup=False,
                                                diagnostics=False))
    assert all("needle_where" not in p for p in off.predictions)


def test_ruler_command_writes_the_columns_and_the_plot(tmp_path):
    import json

    from typer.testing import CliRunner

    from lola_bench.cli import app

    def run(out, *extra):
        r = CliRunner().invoke(app, ["ruler", "--model", "random:tiny", "--ctx", "384", "--samples", "1", "--attn",
                                     "lola", "--window", "16", "--lambda", "32", "--task", "passkey", "--out",
                                     str(out), *extra])
        assert r.exit_code == 0, r.output
        return [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]

    preds = run(tmp_path / "on")
    assert "needle_where" in preds[0] and (tmp_path / "on" / "needle_kept.png").is_file()
    assert pd.read_csv(tmp_path / "on" / "summary.csv")["needle_kept"].notna().all()
    assert pd.read_csv(tmp_path / "on" / "needle_outcomes.csv")["n"].sum() == 1
    preds = run(tmp_path / "off", "--no-diagnostics")
    assert "needle_where" not in preds[0] and not (tmp_path / "off" / "needle_kept.png").exists()
    assert not (tmp_path / "off" / "needle_outcomes.csv").exists()
