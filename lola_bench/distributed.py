"""Data parallelism under ``accelerate launch`` (or torchrun): one model replica per process.

A command launched as ``accelerate launch --num_processes N -m lola_bench ruler ...`` runs in N processes.
Each process reads its rank from the launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK), loads its own
replica (on ``cuda:LOCAL_RANK`` when the device is CUDA), runs its share of the work (``World.shard``: items
``rank, rank + N, ...``), and the pieces are gathered on every rank (``World.gather``) so that each process holds
the full result; only rank 0 writes (``World.is_main``: the run directory, the resume store). The process group
(gloo on CPU, NCCL on CUDA) is created by accelerate on the first collective call.

Outside a launcher ``world()`` is a single process and every helper here is a no-op: the single-process code path
is unchanged. This module imports nothing from lola_bench but errors, so every layer may use it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

from .errors import UserError

# The commands that split their work across processes; the others refuse to run under a launcher.
DATA_PARALLEL_COMMANDS = ("ruler", "commonsense", "perplexity")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    def shard(self, items) -> list:
        """This process's share of ``items`` (every size-th item from its rank): the shares of all ranks partition
        ``items``, and their sizes differ by at most one."""
        items = list(items)
        return items[self.rank::self.size] if self.parallel else items

    def gather(self, obj) -> list:
        """``obj`` of every rank, in rank order, on every rank (a list of one outside a launcher)."""
        if not self.parallel:
            return [obj]
        dist = _process_group()
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def gather_shards(self, local: list) -> list:
        """Undo ``shard``: the lists each rank produced from its share, interleaved back into the original order."""
        if not self.parallel:
            return list(local)
        parts = self.gather(list(local))
        out = []
        for i in range(max(len(p) for p in parts)):
            out.extend(p[i] for p in parts if i < len(p))
        return out

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (``obj`` itself outside a launcher)."""
        if not self.parallel:
            return obj
        dist = _process_group()
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.parallel:
            _process_group().barrier()

    def describe(self) -> dict:
        """What config.json records about the processes of a run."""
        if not self.parallel:
            return {"world_size": 1}
        return {"world_size": self.size, "backend": _backend(), "launcher": _launcher()}


@lru_cache(maxsize=1)
def world() -> World:
    """This process's place in a data-parallel launch, from the launcher's environment (a single process when
    WORLD_SIZE is unset or 1)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise UserError("WORLD_SIZE / RANK / LOCAL_RANK in the environment are not integers") from None
    if size < 1 or not 0 <= rank < size:
        raise UserError(f"RANK={rank} outside 0..WORLD_SIZE-1 (WORLD_SIZE={size})")
    return World(rank=rank, size=size, local_rank=local)


def _process_group():
    """torch.distributed, its default group created (once) by accelerate's PartialState: gloo on CPU, NCCL on CUDA."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        from accelerate import PartialState

        cpu = _cpu_replicas if _cpu_replicas is not None else not torch.cuda.is_available()
        PartialState(cpu=cpu)                   # cpu: accelerate's MULTI_CPU (gloo); else NCCL
    return dist


_cpu_replicas: bool | None = None       # set by rank_device: whether the replicas of this launch live on the CPU


def _backend() -> str:
    from accelerate import PartialState

    _process_group()
    return str(PartialState().backend)


def single_cpu_launch_notice() -> str | None:
    """One line when ``accelerate launch --cpu`` started a single process: accelerate starts several CPU processes
    only through mpirun (--mpirun_hostfile), whatever --num_processes says."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and not world().parallel:
        return ("notice: accelerate launch --cpu started ONE process (accelerate runs several CPU processes only "
                "through mpirun): for N CPU processes use `accelerate launch --multi_gpu --num_processes N -m "
                "lola_bench ... --device cpu` or `torchrun --nproc_per_node N -m lola_bench ...`")
    return None


def _launcher() -> str:
    return "accelerate" if any(k.startswith("ACCELERATE_") for k in os.environ) else "torchrun-compatible"


def rank_device(device: str) -> str:
    """The device of this process's replica: under a launcher, ``cuda`` means this process's own GPU
    (``cuda:LOCAL_RANK``); ``cuda:N`` names one GPU, which N processes cannot all use."""
    global _cpu_replicas
    w = world()
    if not w.parallel:
        return device
    _cpu_replicas = device == "cpu"
    if device.startswith("cuda:"):
        raise UserError(f"--device {device} under a {w.size}-process launch: pass --device auto or cuda (each "
                        "process takes the GPU of its local rank)")
    if device == "cuda":
        return f"cuda:{w.local_rank}"
    return device


def check_command(command: str | None) -> None:
    """Under a launcher, only the data-parallel commands may run (a one-line UserError for the others)."""
    w = world()
    if w.parallel and command is not None and command not in DATA_PARALLEL_COMMANDS:
        raise UserError(f"`{command}` does not split its work across processes: run it without accelerate launch "
                        f"(data-parallel commands: {', '.join(DATA_PARALLEL_COMMANDS)}; sweeps spread over GPUs with "
                        "`sweep --launcher slurm|local` or --shard)")


def adopt_lm(lm):
    """Give an lm-eval HFLM built around an already-loaded model the rank, world size and accelerator that lm-eval's
    data-parallel path reads (HFLM sets rank 0 of 1 for a pre-built model): each rank then answers its share of
    the requests, and lm-eval gathers the metrics on rank 0. Returns ``lm``."""
    w = world()
    if w.parallel:
        _process_group()
        from accelerate import Accelerator

        lm.accelerator = Accelerator()
        lm._rank, lm._world_size = w.rank, w.size
    return lm


def per_rank_timing(predictions: list[dict], keys: tuple[str, ...] = ("attn", "task", "ctx")):
    """One row per (``keys``, rank) of a data-parallel run's predictions: its sample count and median timings, so
    the speed of every process stays visible next to the pooled medians of the summary. None for a
    single-process run (predictions without a ``rank``)."""
    import pandas as pd

    df = pd.DataFrame(predictions)
    if df.empty or "rank" not in df.columns:
        return None
    keys = [k for k in keys if k in df.columns]
    out = df.groupby([*keys, "rank"], sort=False).agg(
        n=("rank", "size"), ttft_s=("ttft_s", "median"), decode_s_per_token=("decode_s_per_token", "median"))
    out = out.reset_index()
    out["decode_ms_per_token"] = out.pop("decode_s_per_token") * 1000
    return out


def write_rank_timing(run, predictions: list[dict]) -> None:
    """Beside the summary of a data-parallel RULER run (``run``: a records.RunDir), timing_by_rank.csv/.md: the
    per-rank timings (per_rank_timing); nothing for a single-process run."""
    table = per_rank_timing(predictions)
    if table is not None:
        run.write_table("timing_by_rank", table, title="Timing per process (rank)",
                        notes=f"Each process of the {int(table['rank'].max()) + 1}-process run timed the samples it "
                        "ran; summary.csv's ttft_s / decode_ms_per_token are medians over the samples of all of them.")
