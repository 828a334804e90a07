"""`lola-bench cache list|clear` (issue #23): the dequantized copies in LOLA_BENCH_CACHE, never anything else."""

import pytest
from typer.testing import CliRunner

from lola_bench.cli import app

runner = CliRunner()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("LOLA_BENCH_CACHE", str(root))
    models = root / "models"
    for name, size in (("SmolLM2-a", 3000), ("Other-b", 5000)):
        d = models / name
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"x" * size)
        (d / "SOURCE").write_text(f"/models/{name}.gguf\n")
    outside = tmp_path / "keep.txt"
    outside.write_text("not the cache's")
    return models, outside


def test_list_shows_entries_sizes_and_sources(cache):
    r = runner.invoke(app, ["cache", "list"])
    assert r.exit_code == 0, r.output
    assert "SmolLM2-a" in r.output and "Other-b" in r.output
    assert "3.0 KB" in r.output and "5.0 KB" in r.output and "8.0 KB" in r.output   # sizes and total
    assert "/models/Other-b.gguf" in r.output


def test_list_empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOLA_BENCH_CACHE", str(tmp_path / "none"))
    r = runner.invoke(app, ["cache", "list"])
    assert r.exit_code == 0 and "no dequantized models cached" in r.output


def test_clear_one_by_name_keeps_the_rest(cache):
    models, outside = cache
    r = runner.invoke(app, ["cache", "clear", "SmolLM2-a", "--yes"])
    assert r.exit_code == 0, r.output
    assert not (models / "SmolLM2-a").exists() and (models / "Other-b").is_dir() and outside.is_file()


def test_clear_all_asks_first(cache):
    models, outside = cache
    r = runner.invoke(app, ["cache", "clear"], input="n\n")
    assert r.exit_code != 0 and (models / "SmolLM2-a").is_dir() and (models / "Other-b").is_dir()
    r = runner.invoke(app, ["cache", "clear"], input="y\n")
    assert r.exit_code == 0, r.output
    assert not any(models.iterdir()) and outside.is_file()


@pytest.mark.parametrize("name", ["nope", "..", "../keep.txt", "../../cache"])
def test_clear_unknown_or_path_names_refused_in_one_line(cache, name):
    models, outside = cache
    r = runner.invoke(app, ["cache", "clear", name, "--yes"])
    assert r.exit_code == 2
    assert "not in the cache" in r.output and len(r.output.strip().splitlines()) == 1
    assert outside.is_file() and len(list(models.iterdir())) == 2


def test_library_refuses_a_symlink_out_of_the_cache(cache, tmp_path):
    from lola_bench.errors import UserError
    from lola_bench.models import cache_store

    models, outside = cache
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "f").write_text("x")
    (models / "link").symlink_to(victim, target_is_directory=True)
    assert "link" not in [e.name for e in cache_store.list_entries()]
    with pytest.raises(UserError):
        cache_store.remove(["link"])
    cache_store.remove(None)
    assert (victim / "f").is_file() and outside.is_file()
