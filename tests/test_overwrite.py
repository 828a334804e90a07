"""--overwrite may only ever replace a directory lola-bench wrote; replacement is atomic."""

import os
from pathlib import Path

import pytest

from lola_bench.errors import UserError
from lola_bench.records import MARKER, RunDir


def _finish(path, overwrite=False, text="new"):
    with RunDir(path, overwrite=overwrite) as run:
        run.write_text("result.txt", text)


@pytest.mark.parametrize("target", [".", "..", "sub/.."])
def test_overwrite_never_replaces_working_directory_or_parents(tmp_path, monkeypatch, target):
    (tmp_path / "sub").mkdir()
    work = tmp_path / "sub" / "work"
    work.mkdir()
    (work / "keep").write_text("x")
    monkeypatch.chdir(work)
    with pytest.raises(UserError, match="working directory"):
        RunDir(target, overwrite=True)
    assert (work / "keep").read_text() == "x"


def test_overwrite_refuses_directory_lola_bench_did_not_write(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "thesis.tex").write_text("precious")
    with pytest.raises(UserError, match="did not write"):
        RunDir(d, overwrite=True)
    assert (d / "thesis.tex").read_text() == "precious"


def test_overwrite_refuses_git_checkout_and_files(tmp_path):
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / MARKER).write_text("run\n")
    with pytest.raises(UserError, match="git"):
        RunDir(repo, overwrite=True)
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        RunDir(f, overwrite=True)


def test_overwrite_replaces_a_run_directory(tmp_path):
    out = tmp_path / "run"
    _finish(out, text="old")
    assert (out / MARKER).is_file()
    with pytest.raises(UserError, match="already exists"):
        RunDir(out)
    _finish(out, overwrite=True, text="new")
    assert (out / "result.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]       # nothing left beside it


def test_legacy_run_directory_with_provenance_config_can_be_replaced(tmp_path):
    out = tmp_path / "legacy"
    out.mkdir()
    (out / "config.json").write_text('{"command": "ruler", "provenance": {}}')
    _finish(out, overwrite=True)
    assert (out / "result.txt").read_text() == "new"


def test_failed_swap_keeps_the_old_run(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _finish(out, text="old")
    real = os.replace

    def failing(src, dst):
        if Path(src).name.startswith(".run.partial-"):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(UserError, match="No space left.*untouched"):
        _finish(out, overwrite=True, text="new")
    assert (out / "result.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_unwritable_output_is_refused_before_work(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write into read-only directories")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(UserError, match="cannot write"):
            RunDir(ro / "run")
    finally:
        ro.chmod(0o755)
