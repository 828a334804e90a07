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
