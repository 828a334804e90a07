"""The dequantized model copies in the cache directory (``lola-bench cache list|clear``).

Each GGUF dequantized once is saved as safetensors under ``cache_dir()/models/<gguf stem>-<hash>`` (see
``gguf.dequantized_cache_path``); a crashed save leaves ``<name>.tmp<pid>``. Only entries directly inside that
``models`` folder are ever listed or removed: a name is never a path.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..paths import cache_dir


@dataclass(frozen=True)
class CacheEntry:
    name: str
    path: Path
    size: int            # bytes, files only, symlinks not followed
    source: str          # the GGUF it was dequantized from (its SOURCE file), else ""
    complete: bool       # config.json present (a leftover .tmp copy is not)


def models_dir() -> Path:
    return cache_dir() / "models"


def _size(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            pass
    return total


def list_entries() -> list[CacheEntry]:
    """Every dequantized copy (and leftover partial copy) in the cache, by name."""
    root = models_dir()
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if p.is_symlink() or not p.is_dir():
            continue
        src = p / "SOURCE"
        source = src.read_text().strip() if src.is_file() else ""
        out.append(CacheEntry(p.name, p, _size(p), source, (p / "config.json").is_file()))
    return out


def remove(names: list[str] | None = None) -> list[CacheEntry]:
    """Delete the named entries (all of them when ``names`` is empty or None); returns what was removed.
    A name that is not an entry of the cache is a UserError, and nothing is deleted."""
    entries = list_entries()
    if names:
        by_name = {e.name: e for e in entries}
        missing = [n for n in names if n not in by_name]
        if missing:
            known = ", ".join(by_name) or "none"
            raise UserError(f"not in the cache {models_dir()}: {', '.join(missing)} (entries: {known})")
        entries = [by_name[n] for n in dict.fromkeys(names)]
    root = models_dir().resolve()
    for e in entries:
        target = e.path.resolve()
        if target.parent != root:                   # never outside the cache's models folder
            raise UserError(f"refusing to delete {e.path}: not directly inside {root}")
        shutil.rmtree(target)
    return entries


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover
