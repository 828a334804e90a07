"""Does a checkpoint fit the LoLA configuration it is loaded into? Misuse is an error, not a silent fallback.

``check_checkpoint(meta, cfg, ...)`` compares what a checkpoint says about itself (``models.checkpoint.read_meta``:
feature map, trained formula, attention sinks, heads, head dim) with the ``LolaConfig`` it is about to run under:

- a disagreement raises a one-sentence UserError naming both values, unless the config's value was chosen
  explicitly (a flag or a preset: ``AttentionSettings.origin`` says ``combine=flag sinks=preset paper ...``, or
  the caller's ``allow`` set names it); then it runs with a one-line warning (logging, on stderr);
- learned checkpoint weights given to a training-free feature map always raise (they would be ignored), and so
  does a learned feature map without weights (``check_weights``);
- heads / head_dim always raise: the tensors cannot be used at all.

A LoLCATs-distilled file (trained formula 'lolcats') evaluated with LoLA's formula ('lola') is the LoLA authors'
own pairing and is accepted.
"""

from __future__ import annotations

import logging

from ..errors import UserError

log = logging.getLogger("lola_bench")

LEARNED_MAPS = ("hedgehog",)
# (trained formula, formula run) pairs that are intended: the LoLA authors run LoLCATs' distilled files this way
COMPATIBLE_COMBINE = {("lolcats", "lola")}


def explicit_settings(origin: str, allow=()) -> set[str]:
    """The settings chosen explicitly: ``origin`` entries whose source is a flag or a preset, plus ``allow``."""
    out = set(allow or ())
    for part in (origin or "").split():
        key, _, src = part.partition("=")
        if src == "flag" or src.startswith("preset"):
            out.add(key)
    # origin is space-separated, so "sinks=preset paper" splits into "sinks=preset" and "paper": handled above
    return out


def check_weights(feature_map: str, ckpt) -> None:
    """A learned map needs checkpoint weights."""
    if feature_map in LEARNED_MAPS and not ckpt:
        raise UserError(f"feature map {feature_map!r} is learned but no checkpoint gives its weights: pass a "
                        f"checkpoint (lola_ckpt / --lola-ckpt) or a training-free map (hedgehog-identity, elu, "
                        f"relu, taylor)")


def check_checkpoint(meta: dict, cfg, *, origin: str = "", allow=(), ckpt=None, heads: int | None = None,
                     head_dim: int | None = None) -> list[str]:
    """Raise on a checkpoint/config mismatch (see the module docstring); return the warnings issued."""
    name = f"checkpoint {ckpt}" if ckpt else "the checkpoint"
    explicit = explicit_settings(origin, allow)
    warnings: list[str] = []

    def mismatch(key: str, ckpt_value, cfg_value, why: str = "") -> None:
        msg = (f"{name} was trained with {key} {ckpt_value!r} but the configuration sets {key} {cfg_value!r}"
               f"{why}")
        if key in explicit:
            msg += " (explicit choice: running anyway)"
            log.warning(msg)
            warnings.append(msg)
            return
        raise UserError(msg + "; drop the setting or pass it explicitly to run this combination")

    trained_map = meta.get("feature_map")
    learned_weights = bool(meta.get("feature_dim")) or trained_map in LEARNED_MAPS
    if learned_weights and cfg.feature_map not in LEARNED_MAPS:
        raise UserError(f"{name} has learned feature-map weights ({trained_map!r}) but the configuration uses the "
                        f"training-free feature map {cfg.feature_map!r}, which would ignore them; use "
                        f"feature_map='hedgehog' or no checkpoint")
    if trained_map and trained_map != cfg.feature_map:
        mismatch("feature_map", trained_map, cfg.feature_map)
    trained = meta.get("trained_combine") or meta.get("combine")
    if trained and trained != cfg.combine and (trained, cfg.combine) not in COMPATIBLE_COMBINE:
        mismatch("combine", trained, cfg.combine)
    sinks = meta.get("sinks")
    if sinks is not None and sinks != cfg.sinks:
        mismatch("sinks", sinks, cfg.sinks)
    shape = ""
    if meta.get("feature_dim") and meta.get("heads") and meta.get("head_dim"):
        shape = f" (feature maps {(meta['heads'], meta['head_dim'], meta['feature_dim'])})"
    for key, want in (("heads", heads), ("head_dim", head_dim)):
        got = meta.get(key)
        if got is not None and want is not None and got != want:
            raise UserError(f"{name} has {key} {got}{shape} but the model has {key} {want}")
    return warnings
