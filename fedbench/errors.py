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


class FedbenchWarning(UserWarning):
    """A warning fedbench itself gives (a checkpoint it cannot use, a weak privacy setting):
    the command-line tools print it as one line (:func:`quiet_warnings`)."""


def missing_requirement(key: str, name: str, extra: str, missing: str,
                        instead: str | None = None) -> ConfigError:
    """The one wording of "this choice needs an optional extra": ``key``/``name`` the choice
    (``dataset``, ``mnist5k``), ``extra`` the pip extra that provides ``missing`` (the module
    that failed to import); ``instead``: a choice that works without it, if any."""
    alternative = f", or use {instead}, which needs nothing more" if instead else ""
    return ConfigError(key, name, f"a choice whose requirements are installed: {name} needs the "
                       f"`{extra}` extra (pip install 'fedbench[{extra}]'; missing: {missing})"
                       + alternative)


def quiet_warnings(*categories: type[Warning]) -> None:
    """Prints warnings of ``categories`` (default: :class:`FedbenchWarning`) as one line,
    ``fedbench: warning: <message>``, instead of Python's two (file, line number and source
    line); other warnings keep Python's form."""
    import sys
    import warnings

    categories = categories or (FedbenchWarning,)
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, categories):
            print(f"fedbench: warning: {message}", file=file or sys.stderr, flush=True)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
