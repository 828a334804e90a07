"""scripts/collect_sweep_cells.py: finished cells of other sweep directories join one, sweep.csv is rebuilt from
them in the existing order, unfinished cells and cells already there are left alone."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "collect_sweep_cells.py"
SOURCE = REPO / "results" / "sweep" / "ruler-8k-embedded"     # six finished cells, committed


def test_collects_finished_cells_only_and_keeps_the_order(tmp_path):
    ids = sorted(p.name for p in (SOURCE / "cells").iterdir())
    a, b, into = tmp_path / "a", tmp_path / "b", tmp_path / "into"
    for d, take in ((a, ids[:3]), (b, ids[2:])):
        (d / "cells").mkdir(parents=True)
        shutil.copy2(SOURCE / "config.json", d / "config.json")
        for c in take:
            shutil.copytree(SOURCE / "cells" / c, d / "cells" / c)
    (b / "cells" / ids[-1] / "done.json").unlink()                   # still running there: not collected
    (into / "cells").mkdir(parents=True)
    shutil.copytree(SOURCE / "cells" / ids[1], into / "cells" / ids[1])
    (into / "cells" / ids[1] / "marker").write_text("mine")          # already here: not overwritten
    pd.read_csv(SOURCE / "sweep.csv").query("cell_id == @ids[1]").to_csv(into / "sweep.csv", index=False)

    r = subprocess.run([sys.executable, str(SCRIPT), str(a), str(b), "--into", str(into), "--no-report"],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr
    got = sorted(p.name for p in (into / "cells").iterdir())
    assert got == sorted(ids[:-1]) and (into / "cells" / ids[1] / "marker").read_text() == "mine"
    assert json.loads((into / "config.json").read_text()) == json.loads((SOURCE / "config.json").read_text())
    csv = pd.read_csv(into / "sweep.csv")
    assert csv["cell_id"].iloc[0] == ids[1] and set(csv["cell_id"]) == set(ids[:-1])   # the old row first
    assert not [p for p in into.iterdir() if p.name.startswith(".collect")]


def test_a_source_that_is_not_a_sweep_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--into", str(tmp_path / "x")],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "not a sweep directory" in r.stderr
