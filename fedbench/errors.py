"""The one exception type for bad input.

Every check of user input raises :class:`ConfigError`, whose message names the key, the value
given and what is allowed, so the CLI can print it as one line and exit non-zero before any
training starts.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration value that fedbench cannot run with.

    Args:
      key: dotted config key, e.g. ``partition.alpha``.
      value: the value that was given.
      allowed: what would be accepted, in words (``"> 0"``, ``"one of: iid, dirichlet"``).
    """

    def __init__(self, key: str, value: Any, allowed: str):
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")


class BufferOverflowError(RuntimeError):
    """A Poisson-sampled cohort or batch was larger than its fixed buffer.

    The buffer is sized so this happens with probability below 1e-9 per run; if it does, the run
    stops rather than silently dropping sampled clients or examples (which would break the
    sampling the privacy accountant assumed).
    """
