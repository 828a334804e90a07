"""Stage 1b of a linearization: calibrating the linear memory's weight at the target length.

``calibrate_linear_weight`` shifts all window factors of a LoLA-patched model by one global offset, chosen from a
small grid to minimize next-token perplexity on the tail of held-back training sequences run through LoLA with a
sparse cache; ``linearize(calibrate=True)`` stores the record it returns in the checkpoint's metadata.
"""

from __future__ import annotations

import math

import torch

from ..data.text_data import PackedData
from ..errors import UserError

CALIBRATION_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


def calibrate_linear_weight(loaded_model, data: PackedData, *, sparse: int = 512, sequences: int = 2,
                            tail: float = 0.25, grid=CALIBRATION_GRID, progress=None) -> dict:
    """Pick one global offset for the window factors of the LoLA-patched ``loaded_model`` (its factors are changed
    in place): the offset d in ``grid`` (factors - d, i.e. the linear memory's weight times exp(-d)) that minimizes
    the next-token NLL on the last ``tail`` fraction of ``sequences`` of the packed training sequences ``data``,
    run through LoLA with ``sparse`` cached pairs. Attention transfer fits every position of a sequence equally,
    and most positions are early; this fits the weight where the linear memory is fullest, on training text only.
    The sequences are the last ones of the training order (unseen by a run shorter than one epoch).
    Returns the record stored in the checkpoint's metadata. ``progress(done, total)`` after each forward.
    """
    from dataclasses import replace as dc_replace

    from .patch import lola_modules, new_cache

    model = loaded_model.model
    mods = lola_modules(model)
    if not mods:
        raise UserError("calibration needs a LoLA-patched model")
    for m in mods:
        m.cfg = dc_replace(m.cfg, sparse=sparse)
    seq_len = data.seq_len
    n = min(sequences, data.num_sequences)
    seqs = [data.sequence(data.num_sequences - 1 - i) for i in range(n)]
    start = int(seq_len * (1 - tail))
    base = [m.window_factors.detach().clone() for m in mods]
    dev = next(model.parameters()).device
    curve, done = [], 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for d in grid:
                for m, b in zip(mods, base):
                    m.window_factors.copy_(b - d)
                nll, count = 0.0, 0
                for x in seqs:
                    x = x.view(1, -1).to(dev)
                    logits = model(input_ids=x, cache=new_cache(model), use_cache=True).logits
                    lg = logits[0, start - 1:-1].float()
                    nll += torch.nn.functional.cross_entropy(lg, x[0, start:], reduction="sum").item()
                    count += lg.shape[0]
                    done += 1
                    if progress is not None:
                        progress(done, len(grid) * n)
                curve.append(math.exp(nll / count))
        best = min(range(len(grid)), key=lambda i: (curve[i], grid[i]))
        with torch.no_grad():
            for m, b in zip(mods, base):
                m.window_factors.copy_(b - grid[best])
    finally:
        for m in mods:
            m.cfg = dc_replace(m.cfg, sparse=0)
        model.train(was_training)
    return {"offset": float(grid[best]), "grid": [float(g) for g in grid], "tail_perplexity": curve,
            "criterion": f"next-token perplexity on the last {tail:.0%} of positions", "sparse": sparse,
            "seq_len": seq_len, "sequences": n, "window": mods[0].cfg.window, "sinks": mods[0].cfg.sinks}
