"""JAX's persistent compilation cache for runs: a second identical run, and every job after the
first of a multirun, reads its compiled programs from disk instead of compiling them again.

``compilation_cache`` (``conf/config.yaml``): ``auto`` (the default) uses the directory of
``JAX_COMPILATION_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/fedbench/jax``
(``~/.cache/fedbench/jax``); a path uses that directory;
``off`` (or null) compiles every program afresh. Every program is cached, however fast it
compiles (fedbench's are small and many). JAX keys each entry by the program itself, its compile
options, the backend and the jax/jaxlib versions, so a changed program never reuses a stale one.

Under ``privacy.noise=secure`` the cache is off for the run: its secret key is a constant of the
compiled round program (:mod:`fedbench.privacy.release`), and a cached executable would write it
to disk.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax

from fedbench.errors import ConfigError

#: The setting as given, resolved by :func:`cache_dir`.
OFF = ("off", None, False)


def default_dir() -> Path:
    """``$XDG_CACHE_HOME/fedbench/jax``, else ``~/.cache/fedbench/jax``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fedbench" / "jax"


def cache_dir(cfg: Mapping[str, Any]) -> str | None:
    """The directory a run ``cfg`` compiles into (None: no cache), from its
    ``compilation_cache`` and ``privacy.noise``.

    Raises:
      ConfigError: a ``compilation_cache`` that is not auto, off, null or a path.
    """
    setting = cfg.get("compilation_cache", "auto")
    if setting is True or not (setting in OFF or isinstance(setting, str)) or setting == "":
        raise ConfigError("compilation_cache", setting, "auto, off, null or a directory")
    if setting in OFF or (cfg.get("privacy") or {}).get("noise") == "secure":
        return None
    if setting == "auto":
        return os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(default_dir())
    return str(Path(setting).expanduser())


def configure(cfg: Mapping[str, Any]) -> str | None:
    """Points JAX's persistent cache at :func:`cache_dir` of ``cfg`` (before the run compiles
    anything) and returns it. The first run of a process that wants the cache also lowers JAX's
    thresholds so that every program is cached."""
    import jax.experimental.compilation_cache.compilation_cache as cc

    wanted = cache_dir(cfg)
    if wanted is not None:
        Path(wanted).mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if jax.config.jax_compilation_cache_dir != wanted:
        jax.config.update("jax_compilation_cache_dir", wanted)
        # the next compilation opens the new directory (or none); JAX logs the reset at INFO,
        # which Hydra's logging would print into a newcomer's first output
        quiet = logging.getLogger("jax._src.compilation_cache")
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            cc.reset_cache()
        finally:
            quiet.setLevel(level)
    return wanted
