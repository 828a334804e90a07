"""Validation shared by the commands: everything checked before a model loads or a file is written."""

from __future__ import annotations

from ..errors import UserError


def check_model(model, max_ctx: tuple[str, list[int]] | None = None) -> None:
    """The model flags, before anything is written or loaded: the spec names something loadable (a GGUF's magic
    bytes, a local directory's config.json and weights), the device and dtype exist, and ``max_ctx`` = (flag,
    values) fits the model's maximum context when its configuration tells it without loading weights."""
    from ..models.loading import check_model_spec, model_config_max_context, resolve_device, resolve_dtype

    resolve_dtype(model.dtype, resolve_device(model.device))
    check_model_spec(model.spec)
    limit = model_config_max_context(model.spec)
    if max_ctx and limit:
        flag, values = max_ctx
        over = [c for c in values if c > limit]
        if over:
            raise UserError(f"{flag} {over[0]} exceeds the model's maximum context of {limit} tokens")


def at_least(**flags) -> None:
    """``at_least(samples=(value, minimum), ...)``: one-line UserError for the first flag below its minimum
    (None values are skipped: the flag was not given)."""
    for name, (value, minimum) in flags.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if v is not None and v < minimum:
                raise UserError(f"--{name.replace('_', '-')} must be >= {minimum}, got {v}")


def check_text(path: str) -> None:
    """A perplexity text: readable UTF-8 with some non-blank text."""
    try:
        with open(path, encoding="utf-8") as f:
            blank = not any(line.strip() for line in f)
    except UnicodeDecodeError:
        raise UserError(f"text file {path} is not UTF-8 text") from None
    except OSError as e:
        raise UserError(f"cannot read text file {path}: {e.strerror or e}") from None
    if blank:
        raise UserError(f"text file {path} is empty (no text to score)")


def check_training_data(paths: list[str]) -> None:
    """linearize --data: every file exists, parses, and the whole holds some text (hub ids are checked when
    read)."""
    from ..data.text_data import read_sources

    try:
        sources = read_sources(paths)
    except UnicodeDecodeError as e:
        raise UserError(f"training data is not UTF-8 text: {e.reason}") from None
    except OSError as e:
        raise UserError(f"cannot read training data {e.filename or ''}: {e.strerror or e}") from None
    if not any(d.strip() for _, docs in sources for d in docs):
        raise UserError(f"the training data ({', '.join(paths)}) holds no text")


def check_ckpt_out(out: str) -> None:
    """linearize --out: a new directory, or one holding a (partial) checkpoint (it resumes there); never the
    working directory, its parents, home, a git checkout, a file, or someone else's non-empty directory."""
    from pathlib import Path

    from ..records import MARKER, _is_protected, probe_writable

    path = Path(out).expanduser()
    why = _is_protected(path)
    if why:
        raise UserError(f"--out {out} {why}: give a new or checkpoint directory")
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {out} is a file, not a directory")
    if path.is_dir() and any(path.iterdir()) and not any(
            (path / n).exists() for n in ("lola.json", "lola.safetensors", "train_state", MARKER)):
        raise UserError(f"--out {out} is a non-empty directory that holds no lola-bench checkpoint: refusing "
                        "to write into it")
    probe_writable(path if path.is_dir() else path.parent)
