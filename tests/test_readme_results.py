"""The README's result tables are what scripts/readme_results.py renders from the committed result files: a number
typed or left there by hand, or a result file changed without re-rendering, fails here."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "readme_results.py"


def check(readme: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--check", "--readme", str(readme)], capture_output=True,
                          text=True, timeout=300)


def test_readme_tables_match_the_result_files():
    r = check(REPO / "README.md")
    assert r.returncode == 0, r.stderr + " (run: python scripts/readme_results.py)"


def test_a_hand_edited_table_is_caught(tmp_path):
    text = (REPO / "README.md").read_text()
    start = text.index("<!-- results:suite -->")
    row = text.index("| 1024 |", start)
    edited = text[:row] + "| 1024 | 99.9 |" + text[text.index("\n", row):]
    (tmp_path / "README.md").write_text(edited)
    r = check(tmp_path / "README.md")
    assert r.returncode == 1 and "stale" in r.stderr


def _layer_rows(one_thread_lola: float, sdpa2: float) -> dict:
    rows = [{"threads": 1, "ctx": 1024, "variant": "sdpa", "min_ms": 20.0},
            {"threads": 1, "ctx": 1024, "variant": "lola", "min_ms": one_thread_lola},
            {"threads": 2, "ctx": 1024, "variant": "sdpa", "min_ms": sdpa2},
            {"threads": 2, "ctx": 1024, "variant": "lola", "min_ms": 30.0},
            {"variant": "sre matmul per boundary", "shape": [9, 65, 128, 576], "alone_us": 1000.0,
             "other_core_busy_us": 1300.0, "gflops_alone": 80.0, "core_mm_gflops": 100.0}]
    return {"rows": rows}


def test_the_two_core_bound_and_the_sre_line_come_from_the_layer_rows(tmp_path, monkeypatch):
    import importlib.util
    import json
    import shutil

    spec = importlib.util.spec_from_file_location("readme_results_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(mod.SPEED / mod.SPEED_RUN / "summary.csv", run / "summary.csv")
    (tmp_path / "cpu-prefill-layer").mkdir()
    (tmp_path / "cpu-prefill-layer" / "new.json").write_text(json.dumps(_layer_rows(40.0, 10.0)))
    monkeypatch.setattr(mod, "SPEED", tmp_path)
    monkeypatch.setattr(mod, "SPEED_RUN", "run")
    monkeypatch.setattr(mod, "SPEED_OTHER_RUNS", ())
    monkeypatch.setattr(mod, "LAYER_RUNS", (("on", "new.json"),))
    text = mod.block_cpu_speed()
    two = next(line for line in text.splitlines() if line.startswith("| new.json | on | 2 |"))
    assert two.rstrip(" |").endswith("| 2")          # 40 ms on one thread / 2 threads / 10 ms SDPA on two
    one = next(line for line in text.splitlines() if line.startswith("| new.json | on | 1 |"))
    assert one.rstrip(" |").endswith("| –")
    assert "1000 µs alone, 80 GFLOP/s, 80% of this core's rate" in text and "1300 µs while the other" in text
