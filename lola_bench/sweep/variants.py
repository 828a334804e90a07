"""The attention variants of a sweep grid (full, LoLA base, LoLA per scorer and lambda, eviction), each with its
checkpoint and, in equal-memory sweeps (``SweepSpec.budgets_mib``), the lambda fitted to each budget at a ctx."""

from __future__ import annotations

from dataclasses import replace

from ..settings import FULL, AttentionSettings, LolaFlags, ModelSettings, lola_config_and_sources
from .budget import MIB, lambda_for_budget, model_shapes


def grid_variants(spec, ctx: int | None, dtype: str) -> list[tuple[AttentionSettings, str | None, tuple[float, ...]]]:
    """Attention variants in canonical order, each with its resolved checkpoint path and the budgets (MiB) its
    lambda was chosen for (empty without ``budgets_mib``). With budgets the lambdas depend on ``ctx``."""
    from ..models.checkpoint import read_meta, resolve_checkpoint

    budgeted = bool(spec.budgets_mib) and ctx is not None
    shapes = model_shapes(spec.model, dtype) if budgeted else None
    out: dict = {}                          # (mode, LolaConfig | None) -> [attn, ckpt, budgets]; insertion order

    def add(mode: str, cfg, origin, ckpt, budgets=()):
        key = (mode, cfg)
        if key not in out:
            out[key] = [AttentionSettings(mode, cfg, spec.kernels, origin) if cfg else FULL, ckpt, []]
        out[key][2] += [b for b in budgets if b not in out[key][2]]

    def lambdas(cfg, proj_dim=None) -> list[tuple[int, tuple]]:
        """(lambda, budgets) for a family: the grid's lambdas, or the one fitted to each budget."""
        if not budgeted:
            return [(lam, ()) for lam in spec.lambdas]
        chosen: dict[int, list] = {}
        for b in spec.budgets_mib:
            lam = lambda_for_budget(cfg, ctx, shapes, b * MIB, proj_dim)
            if lam is not None:             # not even lambda = 0 fits: the family has no cell at this budget
                chosen.setdefault(lam, []).append(b)
        return sorted((lam, tuple(bs)) for lam, bs in chosen.items())

    if spec.full:
        add("full", None, None, None)
    if not spec.lambdas and not budgeted:
        return [(attn, ckpt, ()) for attn, ckpt, _ in out.values()]
    ms = ModelSettings(spec.model, spec.device, spec.dtype, spec.lola_ckpt)
    resolved = list(dict.fromkeys(resolve_checkpoint(ms, fm) for fm in spec.feature_maps))
    for ckpt, fmap in resolved:
        meta = read_meta(ckpt) if ckpt else None
        proj = (meta or {}).get("feature_dim")
        for window in spec.windows:
            flags = LolaFlags(window=window, combine=spec.combine, sinks=spec.sinks, gqa=spec.gqa, chunk=spec.chunk,
                              seed=spec.seed, preset=spec.preset)
            cfg, origin = lola_config_and_sources(flags, fmap, meta, ckpt)
            base = replace(cfg, sparse=0, scorer="sre")
            if 0 in spec.lambdas:          # scorer-independent: one base cell, canonical (default) scorer
                add("base", base, origin, ckpt)
            for scorer in spec.scorers:
                for lam, budgets in lambdas(replace(base, scorer=scorer), proj):
                    if lam:
                        add("lola", replace(base, sparse=lam, scorer=scorer), origin, ckpt, budgets)
                    elif budgets:          # the budget leaves no sparse cache: that is the base cell
                        add("base", base, origin, ckpt, budgets)
    if spec.evict:  # no checkpoint, no feature map: once per window, the settings the first LoLA cells resolved
        ckpt, _ = resolved[0]
        for window in spec.windows:
            flags = LolaFlags(window=window, combine=spec.combine, sinks=spec.sinks, gqa=spec.gqa, chunk=spec.chunk,
                              seed=spec.seed, preset=spec.preset)
            cfg, origin = lola_config_and_sources(flags, "hedgehog-identity", read_meta(ckpt) if ckpt else None, ckpt)
            cfg = replace(cfg, fold=False, scorer="sink")
            keep: dict = {}
            for at in spec.evict_at:        # boundary and / or prompt_end: the same budgets (the same cache bytes)
                for s in spec.eviction_scorers():
                    pairs = ([(0, ())] if budgeted and 0 in spec.lambdas else []) + lambdas(replace(cfg, scorer=s))
                    for lam, budgets in pairs:  # lambda = 0: the scorer plays no part, sinks + window (StreamingLLM)
                        keep.setdefault((at, 0, "sink") if lam == 0 else (at, lam, s), []).extend(budgets)
            for (at, lam, scorer), budgets in keep.items():
                add("evict", replace(cfg, sparse=lam, scorer=scorer, evict_at=at), origin, None, sorted(set(budgets)))
    return [(attn, ckpt, tuple(sorted(budgets))) for attn, ckpt, budgets in out.values()]
