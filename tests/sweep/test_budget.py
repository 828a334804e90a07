"""Equal-memory sweeps (--budget-mib): the lambda each family gets fits the budget and is the largest that does,
the budget is recorded but not hashed, and model shapes come from the config alone (no model loaded)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from lola_bench.attention.config import LolaConfig
from lola_bench.errors import UserError
from lola_bench.sweep import SweepSpec, cells
from lola_bench.sweep.budget import MIB, cache_bytes, lambda_for_budget, model_shapes

SHAPES = model_shapes("random:tiny")
BUDGETS = (0.2, 0.3)
SPEC = SweepSpec(model="random:tiny", device="cpu", windows=(64,), ctxs=(2048,), tasks=("passkey",), samples=2,
                 scorers=("sink", "attention", "snapkv"), evict=True, budgets_mib=BUDGETS)


@pytest.mark.parametrize("cfg", [LolaConfig(window=64, scorer="attention"), LolaConfig(window=32, scorer="sre"),
                                 LolaConfig(window=64, scorer="snapkv", fold=False),
                                 LolaConfig(window=64, scorer="sink", sinks=4, fold=False)])
@pytest.mark.parametrize("budget_mib", [0.15, 0.2, 0.5])
def test_lambda_fits_the_budget_and_one_more_does_not(cfg, budget_mib):
    lam = lambda_for_budget(cfg, 2048, SHAPES, budget_mib * MIB)
    assert lam is not None and lam > 0
    assert cache_bytes(replace(cfg, sparse=lam), 2048, SHAPES) <= budget_mib * MIB
    assert cache_bytes(replace(cfg, sparse=lam + 1), 2048, SHAPES) > budget_mib * MIB


def test_lambda_none_when_nothing_fits_and_capped_when_everything_does():
    cfg = LolaConfig(window=64, scorer="attention", fold=False)
    floor = cache_bytes(replace(cfg, sparse=0), 2048, SHAPES)
    assert lambda_for_budget(cfg, 2048, SHAPES, floor - 1) is None
    assert lambda_for_budget(cfg, 2048, SHAPES, floor) == 0
    lam = lambda_for_budget(cfg, 2048, SHAPES, 10_000 * MIB)      # the cache holds every candidate
    top = cache_bytes(replace(cfg, sparse=2048), 2048, SHAPES)
    assert cache_bytes(replace(cfg, sparse=lam), 2048, SHAPES) == top
    assert cache_bytes(replace(cfg, sparse=lam - 1), 2048, SHAPES) < top   # the smallest such lambda


def test_budget_grid_gives_each_family_its_fitted_lambda():
    grid = cells(SPEC)
    budgeted = [c for c in grid if c.budgets_mib]
    families = {(c.config.attention.mode, c.config.attention.lola.scorer) for c in budgeted}
    assert families == {(m, s) for m in ("lola", "evict") for s in ("sink", "attention", "snapkv")}
    for c in budgeted:
        cfg = c.config.attention.lola
        assert len(c.budgets_mib) == 1 and c.describe()["budget_mib"] == c.budget_mib
        assert cache_bytes(cfg, 2048, SHAPES) <= c.budget_mib * MIB
        assert cache_bytes(replace(cfg, sparse=cfg.sparse + 1), 2048, SHAPES) > c.budget_mib * MIB
        assert f"budget={c.budget_mib:g}MiB" in c.label
    for mode in ("lola", "evict"):     # two budgets, two lambdas per family; a larger budget buys a larger lambda
        lams = sorted((c.budget_mib, c.config.attention.lola.sparse) for c in budgeted
                      if c.config.attention.mode == mode and c.config.attention.lola.scorer == "attention")
        assert [b for b, _ in lams] == list(BUDGETS) and lams[0][1] < lams[1][1]
    # full, the base cell and StreamingLLM (evict, sink, lambda 0) stay at their own cost, with no budget
    own = {(c.config.attention.mode, c.config.attention.lola.sparse if c.config.attention.lola else None)
           for c in grid if not c.budgets_mib}
    assert own == {("full", None), ("base", 0), ("evict", 0)}


def test_budget_is_not_hashed():
    grid = cells(SPEC)
    cell = next(c for c in grid if c.budgets_mib and c.config.attention.mode == "evict")
    assert "budget" not in json.dumps(cell.config.to_dict())
    lam, scorer = cell.config.attention.lola.sparse, cell.config.attention.lola.scorer
    plain = cells(replace(SPEC, budgets_mib=(), lambdas=(lam,), scorers=(scorer,), full=False))
    same = [c for c in plain if c.config.attention.mode == "evict"]
    assert [c.cell_id for c in same] == [cell.cell_id] and not same[0].budgets_mib
    other = cells(replace(SPEC, budgets_mib=(cell.budget_mib + 1e-9,)))   # same lambda, other budget: same id
    assert cell.cell_id in {c.cell_id for c in other}


def test_model_shapes_without_loading(tmp_path):
    s = model_shapes("smollm2-135m")            # the embedded model: read nothing, no weights
    assert (s.layers, s.heads, s.kv_heads, s.head_dim, s.dtype_bytes) == (30, 9, 3, 64, 4)
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 2, "num_attention_heads": 8,
                                                      "num_key_value_heads": 2, "hidden_size": 256}))
    s = model_shapes(str(tmp_path), "bfloat16")
    assert (s.layers, s.heads, s.kv_heads, s.head_dim, s.dtype) == (2, 8, 2, 32, torch.bfloat16)
    with pytest.raises(UserError, match="config.json"):
        model_shapes(str(tmp_path / "missing"))


def test_budget_flags_are_checked():
    with pytest.raises(UserError, match="ruler"):
        SweepSpec(suite="commonsense", budgets_mib=(8,))
    with pytest.raises(UserError, match="> 0"):
        SweepSpec(budgets_mib=(0,))
    assert SweepSpec(budgets_mib=("16", "8", 8.0)).budgets_mib == (8, 16)


def test_evict_scorers_split_the_families():
    """--scorer sre --evict-scorer sink,attention: LoLA cells only with sre, eviction cells only with the others
    (and --evict-scorer implies --evict); sre is refused as an eviction scorer."""
    spec = replace(SPEC, scorers=("sre",), evict=False, evict_scorers=("sink", "attention"))
    grid = cells(spec)
    families = {(c.config.attention.mode, c.config.attention.lola.scorer) for c in grid if c.budgets_mib}
    assert families == {("lola", "sre"), ("evict", "sink"), ("evict", "attention")}
    assert spec.evict
    with pytest.raises(UserError, match="--evict-scorer sre"):
        replace(SPEC, evict_scorers=("sre", "sink"))


def test_prompt_end_cells_get_the_boundary_cells_lambdas():
    """--evict-at boundary,prompt_end --budget-mib: both modes hold the same cache after the prompt (up to chunk
    alignment; prompt_end's then grows with the generated tokens), so each prompt_end family gets the lambda its
    boundary twin got, at every budget."""
    grid = cells(replace(SPEC, evict_at=("boundary", "prompt_end")))
    ev = {}
    for c in grid:
        a = c.config.attention
        if a.mode == "evict" and c.budgets_mib:
            ev.setdefault(a.lola.evict_at, set()).add((a.lola.scorer, a.lola.sparse, c.budgets_mib))
    assert set(ev) == {"boundary", "prompt_end"} and ev["boundary"] == ev["prompt_end"] and ev["boundary"]
    assert [c.cell_id for c in cells(SPEC)] == [c.cell_id for c in grid
                                                if c.config.attention.lola is None or
                                                c.config.attention.lola.evict_at == "boundary"]
