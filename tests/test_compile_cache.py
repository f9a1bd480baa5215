"""Compiled programs kept on disk between runs (fedbench/compile_cache.py).

Checked by what lands in the cache directory, not by timings (those are in benchmarks/NOTES.md):
the first run writes its programs, an identical second run (a new simulator, so nothing is
reused in memory) writes none because every program is read back, a changed program adds
entries, and a run with secure noise (its secret key is a constant of its program) writes
nothing at all.
"""

from __future__ import annotations

import pytest

from conftest import compose
from fedbench import compile_cache
from fedbench.errors import ConfigError
from fedbench.run import run_experiment

TINY = ["rounds=2", "eval_every=2", "dataset=breast_cancer", "num_clients=4",
        "clients_per_round=4", "model=logreg", "checkpoint_every=0"]


def test_the_setting_resolves_to_a_directory_or_none(monkeypatch, tmp_path):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
    assert compile_cache.cache_dir({}) == str(tmp_path / "env")
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.cache_dir({"compilation_cache": "auto"}) == str(
        tmp_path / "xdg" / "fedbench" / "jax")
    assert compile_cache.cache_dir({"compilation_cache": "/x/y"}) == "/x/y"
    assert compile_cache.cache_dir({"compilation_cache": "off"}) is None
    assert compile_cache.cache_dir({"compilation_cache": None}) is None
    assert compile_cache.cache_dir({"privacy": {"noise": "secure"}}) is None
    for bad in (True, 3, ""):
        with pytest.raises(ConfigError, match="compilation_cache"):
            compile_cache.cache_dir({"compilation_cache": bad})


def _entries(path):
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


def test_a_second_identical_run_compiles_nothing_new_and_secure_runs_cache_nothing(tmp_path):
    cache = tmp_path / "cache"
    try:
        first = run_experiment(compose(TINY + [f"compilation_cache={cache}"]), tmp_path / "a",
                               progress=None)
        written = _entries(cache)
        assert written and first["timing"]["compilation_cache"] is True
        run_experiment(compose(TINY + [f"compilation_cache={cache}"]), tmp_path / "b",
                       progress=None)
        assert _entries(cache) == written  # every program read back
        run_experiment(compose(TINY + [f"compilation_cache={cache}", "lr=0.05"]),
                       tmp_path / "c", progress=None)
        assert len(_entries(cache)) == len(written)  # lr is data: the same programs
        run_experiment(compose(TINY + [f"compilation_cache={cache}", "model=mlp"]),
                       tmp_path / "d", progress=None)
        assert set(_entries(cache)) > set(written)  # a changed program: new entries

        secure = tmp_path / "secure"
        summary = run_experiment(compose(TINY + [
            f"compilation_cache={secure}", "privacy=dp_client", "privacy.noise=secure",
            "privacy.target_epsilon=null", "privacy.noise_multiplier=1.0"]), tmp_path / "s",
            progress=None)
        assert summary["timing"]["compilation_cache"] is False and not _entries(secure)
    finally:
        compile_cache.configure({})  # back to the session's cache (tests/conftest.py)
