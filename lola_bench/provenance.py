"""Provenance stamped into every result file: git commit, versions, machine, time, command line."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import subprocess
import sys

import torch

from .paths import REPO_ROOT

PACKAGES = ("lola-bench", "torch", "transformers", "lm-eval", "triton", "peft", "accelerate", "gguf", "pandas")


def git_info(root=REPO_ROOT) -> dict:
    def run(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)

    try:
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": "unknown", "dirty": None}
        dirty = run("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def package_versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def threads_in_force() -> int:
    """torch's CPU threads when the run started (``mark_threads``, after --threads), else now."""
    return _START.get("threads") or torch.get_num_threads()


def device_info(device: str = "cpu") -> dict:
    if device.startswith("cuda") and torch.cuda.is_available():
        return {"kind": "cuda", "name": torch.cuda.get_device_name(device if ":" in device else None),
                "count": torch.cuda.device_count(),
                "threads": threads_in_force()}
    return {"kind": "cpu", "name": cpu_name(), "cores": os.cpu_count(), "torch_threads": threads_in_force(),
            "threads": threads_in_force()}


def device_label(device: str = "cpu") -> str:
    info = device_info(device)
    return f"GPU {info['name']}" if info["kind"] == "cuda" else f"CPU ({info['cores']} cores)"


_START: dict = {}


def mark_start() -> None:
    """Record the git state and time when a command starts: results carry the code that produced them, even
    if the checkout changes while a long run is going."""
    _START.update(git=git_info(), utc_time=_now())


def mark_threads() -> None:
    """Record the torch thread count in force as a run starts (after --threads is applied)."""
    _START["threads"] = torch.get_num_threads()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def provenance(device: str = "cpu") -> dict:
    return {
        "git": _START.get("git") or git_info(),
        "started_utc": _START.get("utc_time"),
        "versions": package_versions(),
        "device": device_info(device),
        "host": platform.node(),
        "platform": platform.platform(),
        "utc_time": _now(),
        "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
    }
