"""XLA compiler options of the simulator's compiled programs (the ``cpu_fusions`` config key).

Recent XLA:CPU hands some operations to libraries through "library fusions"
(``xla_cpu_experimental_ynn_fusion_type``: YNNPACK; still marked experimental by XLA). Left to
itself (``xla``), XLA 0.10 sends some convolutions, reductions and matrix products to YNNPACK and
the rest to Eigen or its own code. ``dots`` asks for YNNPACK for matrix products only, which
leaves convolutions and reductions to Eigen and XLA. On the 2-core VM of
``benchmarks/NOTES.md`` ("W4: YNNPACK dots") that makes one local step of McMahan et al.'s CNN
(batch 50, ``conv_impl=hybrid``) 1.3x faster (about 26 against 33-37 ms, PyTorch's loop 23-25)
and moves nothing that the VM can resolve for the logistic regression and the 2NN. So ``auto``
means ``dots`` for the CNN on CPU and ``xla`` otherwise.

The options go to one program at a time (``jax.jit(..., compiler_options=...)``), never through
``XLA_FLAGS``, so other programs in the process keep XLA's defaults. Results differ between the
settings by float rounding only (tests/test_xla_options.py).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from fedbench.errors import ConfigError

CPU_FUSIONS = ("auto", "xla", "dots")
YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
YNN_DOTS = {YNN_OPTION: "LIBRARY_FUSION_TYPE_DOT"}


def check(cpu_fusions: Any) -> str:
    """``cpu_fusions`` if it is one of :data:`CPU_FUSIONS`, else a ConfigError naming the key."""
    if cpu_fusions not in CPU_FUSIONS:
        raise ConfigError("cpu_fusions", cpu_fusions, "one of: " + ", ".join(CPU_FUSIONS))
    return cpu_fusions


@functools.cache
def ynn_dots_available() -> bool:
    """Whether this jax and XLA accept :data:`YNN_DOTS` (compiles a 2x2 product with it)."""
    try:
        probe = jax.jit(lambda a: a @ a, compiler_options=YNN_DOTS)
        probe.lower(jnp.ones((2, 2), jnp.float32)).compile()
    except Exception:  # older jax (no compiler_options) or XLA (no such option or value)
        return False
    return True


def wants_ynn_dots(model: Any) -> bool:
    """``auto``'s rule: the convolutional model (measured faster), nothing else (no gain)."""
    return getattr(model, "conv_impl", None) is not None


def compiler_options(cpu_fusions: str, model: Any, backend: str | None = None) -> dict[str, str]:
    """The options for a program training or scoring ``model`` (empty: XLA's defaults).

    Args:
      cpu_fusions: ``auto`` | ``xla`` | ``dots`` (the config key ``cpu_fusions``).
      model: the flax module (``auto`` looks at it).
      backend: JAX's backend name (default: ``jax.default_backend()``); the option only
        concerns ``cpu``.

    Raises:
      ConfigError: an unknown value, or ``dots`` where this XLA has no such option.
    """
    check(cpu_fusions)
    if (backend or jax.default_backend()) != "cpu" or cpu_fusions == "xla":
        return {}
    if cpu_fusions == "dots":
        if not ynn_dots_available():
            raise ConfigError("cpu_fusions", cpu_fusions, "auto or xla: this jax/XLA "
                              f"({jax.__version__}) does not accept {YNN_OPTION}")
        return dict(YNN_DOTS)
    return dict(YNN_DOTS) if wants_ynn_dots(model) and ynn_dots_available() else {}


def jit(fn, options: dict[str, str]):
    """``jax.jit(fn)`` with ``options`` (none passed when empty: any jax version)."""
    return jax.jit(fn, compiler_options=options) if options else jax.jit(fn)
