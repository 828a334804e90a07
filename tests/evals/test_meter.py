"""Peak memory excludes work wrapped in meter.unmetered() (the needle diagnostics inside a timed generation), and
still counts everything else."""

import torch

from lola_bench import meter
from lola_bench.evals.timing import PeakMemory

MB = 2**20


def test_unmetered_allocations_do_not_count_but_metered_ones_do():
    with PeakMemory("cpu") as mem:
        with meter.unmetered():
            x = torch.ones(50 * MB // 4 * 4)          # 200 MiB, touched
            x.add_(1)
            del x
        y = torch.ones(25 * MB // 4 * 4)              # 100 MiB, touched, alive at exit
        y.add_(1)
    assert 80 * MB <= mem.peak < 150 * MB, mem.peak / MB
    assert not meter.ACTIVE


def test_without_unmetered_the_same_work_counts():
    with PeakMemory("cpu") as mem:
        x = torch.ones(50 * MB // 4 * 4)
        x.add_(1)
        del x
        y = torch.ones(25 * MB // 4 * 4)
        y.add_(1)
    assert mem.peak >= 180 * MB, mem.peak / MB
