"""The commonsense variant loop: every attention variant over every task, each (variant, task) result saved
as soon as it finishes, the task in progress resumable request by request."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from ...distributed import world
from ...errors import UserError
from ...models.variants import attention_variant
from ...settings import implementation_columns, variant_columns
from .harness import run_commonsense
from .lengths import beyond_exact_shares
from .lm_eval_format import official_results


@dataclass(frozen=True)
class CommonsenseSettings:
    tasks: tuple[str, ...]
    data_dir: str | None = None      # offline mirror (None: lm-eval's official online tasks)
    limit: int | None = None
    num_fewshot: int | None = None
    batch_size: int = 1
    log_samples: bool = False        # keep lm-eval's per-sample records (its --log_samples)

    def to_dict(self) -> dict:
        return {"tasks": list(self.tasks), "data_dir": self.data_dir, "offline": self.data_dir is not None,
                "limit": self.limit, "num_fewshot": self.num_fewshot, "batch_size": self.batch_size,
                "log_samples": self.log_samples}


@dataclass
class CommonsenseOutput:
    summary: pd.DataFrame                                 # one row per variant x task x metric (fractions)
    raw: dict = field(default_factory=dict)               # lm-eval's results per variant (official task names)
    samples: dict = field(default_factory=dict)           # variant -> task -> lm-eval's per-sample records
    reused: dict = field(default_factory=dict)            # variant -> tasks taken from an interrupted run
    lengths_error: str | None = None                      # why the beyond-exact-span shares are missing


def _shares(loaded, settings: CommonsenseSettings, variants):
    configs = {v.mode: v.lola for v in variants if v.lola is not None}
    try:
        return beyond_exact_shares(loaded.tokenizer, list(settings.tasks), configs, data_dir=settings.data_dir,
                                   limit=settings.limit, num_fewshot=settings.num_fewshot), None
    except Exception as e:  # noqa: BLE001 - a missing statistic must not stop the evaluation
        return {}, f"{type(e).__name__}: {e}"


def run_commonsense_variants(loaded, variants, settings: CommonsenseSettings, *, ckpt: str | None = None,
                             store=None, resume_key: dict | None = None, device_label: str = "cpu",
                             progress=None, notice=None) -> CommonsenseOutput:
    """Evaluate every variant on ``settings.tasks``. ``store`` (a records.ResumeStore) keeps finished (variant,
    task) results and the request cache of the task in progress under ``resume_key`` (the settings that decide
    the results); a rerun with the same key reuses them. ``progress(completed, total, description)``.

    The request cache is lm-eval's sqlite file, whose values are unpickled when read: it is resumed only if its
    sha256 equals the one this code recorded in the store when it last closed the file (a task finished or the run
    was interrupted); otherwise it is deleted and its requests recomputed, with ``notice(message)`` (one line;
    default: stderr)."""
    from ...records import cell_hash

    names = list(settings.tasks)
    spans, lengths_error = _shares(loaded, settings, variants)
    total = len(variants) * len(names)
    out = CommonsenseOutput(pd.DataFrame(), lengths_error=lengths_error)
    frames = []
    for vi, v in enumerate(variants):
        def step(task_name, i, n, _v=v, _vi=vi):
            if progress:
                progress(_vi * len(names) + i - 1, total, f"{_v.mode}: {task_name} ({i}/{n})")

        def key(task_name, _v=v):
            return {**(resume_key or {}), "attention": _v.to_dict(), "task": task_name,
                    **({"log_samples": True} if settings.log_samples else {})}

        def save(task_name, record, _v=v):
            if store is not None:
                store.save(f"{_v.mode}-{task_name}", key(task_name), record)

        done = {}
        if store is not None:
            done = {t: r for t in names if (r := store.load(f"{v.mode}-{t}", key(t))) is not None}
            done = world().broadcast(done)      # data-parallel: every rank resumes what rank 0 found
            if done:
                out.reused[v.mode] = list(done)
        rcache = store.path / f"requests-{v.mode}-{cell_hash(key(''))}" if store is not None else None
        if rcache is not None:
            if world().is_main:                     # data-parallel: rank 0 checks every rank's cache file
                checked_request_cache(store, rcache, key(""), notice)
            world().barrier()

        def saved(task_name, record, _save=save, _rcache=rcache, _key=key(""), _v=v):
            _save(task_name, record)
            if _rcache is not None:
                record_request_cache(store, _rcache, _key)

        with attention_variant(loaded.model, v, ckpt) as used:
            try:
                df, res = run_commonsense(loaded.model, loaded.tokenizer, names, data_dir=settings.data_dir,
                                          limit=settings.limit, num_fewshot=settings.num_fewshot,
                                          batch_size=settings.batch_size, device=loaded.device, progress=step,
                                          log_samples=settings.log_samples,
                                          finished=done, on_task_done=saved, request_cache=rcache)
            except ValueError as e:
                raise UserError(str(e)) from None
            except BaseException:                   # interrupted: the cache (closed by now) may be resumed
                if rcache is not None:
                    record_request_cache(store, rcache, key(""))
                raise
            impl = used() or ("reused" if done else None)
        df.insert(0, "attn", v.mode)
        for col, val in {**variant_columns(v), **implementation_columns(v, impl)}.items():
            if col != "attn":
                df[col] = val
        df["beyond_exact_span"] = df["task"].map(spans.get(v.mode, {})) if v.lola else None
        df.insert(0, "model", loaded.spec)
        frames.append(df)
        out.raw[v.mode], out.samples[v.mode] = official_results(res)
    if progress:
        progress(total, total, "commonsense")
    out.summary = percent_columns(pd.concat(frames, ignore_index=True))
    out.summary["device"] = device_label
    return out


def _cache_files(prefix) -> list:
    from pathlib import Path

    prefix = Path(prefix)
    return sorted(prefix.parent.glob(prefix.name + "_rank*.db*")) if prefix.parent.is_dir() else []


def _cache_digest(prefix) -> dict[str, str]:
    import hashlib

    out = {}
    for f in _cache_files(prefix):
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        out[f.name] = h.hexdigest()
    return out


def record_request_cache(store, prefix, key) -> None:
    """Record the sha256 of the (closed) request cache files in the resume store (``<prefix>.sha256``, beside the
    cache, with the settings key it belongs to)."""
    from pathlib import Path

    from ...records import atomic_write_json, to_jsonable

    if not world().is_main:                   # data-parallel: rank 0 keeps the store
        return
    atomic_write_json(Path(f"{prefix}.sha256"), {"key": to_jsonable(key), "sha256": _cache_digest(prefix)})


def checked_request_cache(store, prefix, key, notice=None) -> bool:
    """Keep the request cache only if it is exactly what this code last closed (sha256 recorded in the store);
    otherwise delete it (its requests are recomputed) and say so in one line. True if a cache is kept."""
    import sys
    from pathlib import Path

    files = _cache_files(prefix)
    if not files:
        return False
    import json

    from ...records import to_jsonable

    try:
        recorded = json.loads(Path(f"{prefix}.sha256").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recorded = None
    if (isinstance(recorded, dict) and recorded.get("key") == to_jsonable(key)
            and recorded.get("sha256") == _cache_digest(prefix)):
        return True
    for f in [*files, Path(f"{prefix}.sha256")]:
        f.unlink(missing_ok=True)
    msg = (f"request cache {Path(prefix).name} in {Path(prefix).parent} does not match the checksum recorded when "
           "it was written: deleted (lm-eval unpickles it), its requests are recomputed")
    (notice or (lambda m: print(m, file=sys.stderr)))(msg)
    return False


FRACTION_METRICS = ("acc", "acc_norm", "exact_match", "f1", "em", "mc1", "mc2", "acc_mutual_info")


def percent_columns(summary: pd.DataFrame) -> pd.DataFrame:
    """Add ``value_pct`` and its 95% interval ``ci_low_pct`` / ``ci_high_pct`` (value +- 1.96 lm-eval stderr,
    clipped to [0, 100]) after ``stderr``: the percent scale of RULER's rows. The fraction columns (``value``,
    ``stderr``) stay, as committed results use them. No stderr (lm-eval gives none for n = 1): no interval. Only
    metrics that are fractions (accuracy, exact match, F1) get percent columns; others (perplexity ...) stay empty."""
    out = summary.copy()
    fraction = out["metric"].astype(str).str.split(",").str[0].isin(FRACTION_METRICS)
    value = pd.to_numeric(out["value"], errors="coerce").where(fraction)
    stderr = pd.to_numeric(out["stderr"], errors="coerce")
    cols = {"value_pct": 100 * value,
            "ci_low_pct": (100 * (value - 1.96 * stderr)).clip(0, 100),
            "ci_high_pct": (100 * (value + 1.96 * stderr)).clip(0, 100)}
    at = list(out.columns).index("stderr") + 1
    for i, (name, col) in enumerate(cols.items()):
        out.insert(at + i, name, col.round(4))
    return out


def sweep_row(summary: pd.DataFrame, num_fewshot: int | None = None) -> pd.DataFrame:
    """One variant's long rows for one task (metric, value, stderr as fractions) as the sweep's single wide row:
    accuracy, acc_norm and accuracy_stderr in percent, on RULER's 0-100 scale. The one place the two shapes of a
    commonsense result meet."""
    by_metric = {r["metric"]: r for r in summary.to_dict("records")}
    acc, norm = by_metric.get("acc"), by_metric.get("acc_norm")
    first = summary.iloc[0].to_dict()
    keep = [k for k in ("model", "attn", "window", "lambda", "sinks", "scorer", "feature_map", "task", "combine",
                        "gqa", "chunk", "settings_from", "implementation", "threads", "checkpoint", "device")
            if k in first]
    row = {**{k: first[k] for k in keep}, "ctx": None, "n": acc["n"] if acc else None,
           "accuracy": 100 * acc["value"] if acc else None, "acc_norm": 100 * norm["value"] if norm else None,
           "accuracy_stderr": 100 * acc["stderr"] if acc else None,
           "num_fewshot": acc["num_fewshot"] if acc else num_fewshot}
    return pd.DataFrame([row])
