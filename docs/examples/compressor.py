"""A worked example of adding a compressor: TernGrad, one piece file (and, to register it for
good, one config).

W. Wen, C. Xu, F. Yan, C. Wu, Y. Wang, Y. Chen, H. Li, "TernGrad: Ternary Gradients to Reduce
Communication in Distributed Deep Learning", NeurIPS 2017, Eq. (3)-(4): per bucket (a layer in
the paper) with scale ``s = max_i |x_i|``,

    Q(x)_i = s * sign(x_i) * b_i,    b_i ~ Bernoulli(|x_i| / s)  independently,

so ``E[Q(x)] = x`` (unbiased) and ``Var Q(x)_i = s |x_i| - x_i^2``. The message is ternary
``{-1, 0, 1}``: 2 bits per value, plus the scale as one float32 per bucket. Summed over a bucket
of ``n`` entries, ``E||Q(x) - x||^2 = s ||x||_1 - ||x||^2 <= (sqrt(n) - 1) ||x||^2`` (``s <=
||x||_2``, ``||x||_1 <= sqrt(n) ||x||_2``): its variance bound ``omega``, so error feedback
wraps it only on buckets where ``sqrt(n) - 1 < 1`` (``n <= 3``) and refuses it elsewhere.
Unbiased, it can raise a clipped update's norm (``E||Q(x)||^2 = s ||x||_1 >= ||x||^2``): client-
level DP refuses it. It may encode the server's model (``downlink``), as the other unbiased
quantisers may.

Adding it to fedbench is this file as ``fedbench/compression/terngrad.py`` (the registry finds
its ``PIECE``) plus ``conf/compression/terngrad.yaml`` holding :data:`DEFAULTS`::

    # TernGrad (Wen et al., NeurIPS 2017): s * sign(x) * Bernoulli(|x| / s), s = max|x| per
    # bucket; 2 bits per value plus one float32 scale per bucket. Unbiased.
    # Run: `fedbench compression=terngrad` (the default experiment: 10.1 s, 3.8 s of it
    # compiling, on a 2-core AMD EPYC VM shared with other work, 2026-12-07).
    name: terngrad
    bucket_size: null       # entries per scale; null: one scale per block
    per_tensor: true        # blocks: each tensor (true) or the whole model flattened (false)
    error_feedback: false   # keep the residual (delta + e) - sent at the client
    then: null              # must stay null (a quantiser ends a chain)
    downlink: null          # the model each client receives: null | quantize | qsgd | ...

No list is edited; ``tests/test_compressor_registry.py`` then checks its declarations and its
bytes with every algorithm. Here it stays out of the package: :func:`register` adds it at run
time (``fedbench.compression.registry.register``), and ``tests/test_compressor_registry.py``
imports this file, registers it, and checks its unbiasedness and its bits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fedbench.compression import registry
from fedbench.compression.buckets import SCALE_BITS, bucket_count, buckets, unbucket
from fedbench.compression.piece import Quantizer, Settings, check_integer

#: What ``conf/compression/terngrad.yaml`` would hold.
DEFAULTS = {"name": "terngrad", "bucket_size": None, "per_tensor": True,
            "error_feedback": False, "then": None, "downlink": None}


def ternarize(values: jax.Array, key: jax.Array, bucket_size: int | None) -> jax.Array:
    """TernGrad's ``Q(x)`` of ``values`` (1-D) per bucket (Wen et al. 2017, Eq. 3-4)."""
    grid, _ = buckets(values, bucket_size)
    scale = jnp.max(jnp.abs(grid), axis=1, keepdims=True)
    safe = jnp.where(scale > 0, scale, 1.0)
    keep = jax.random.uniform(key, grid.shape, grid.dtype) < jnp.abs(grid) / safe
    decoded = jnp.where(keep, jnp.sign(grid) * scale, 0.0)
    return unbucket(decoded, values.shape[0], values.dtype)


def encode(settings: Settings, values: jax.Array, key: jax.Array | None) -> jax.Array:
    return ternarize(values, key, settings["bucket_size"])


def bits(settings: Settings, entries: int) -> int:
    """2 bits per value (``{-1, 0, 1}``) plus one float32 scale per bucket."""
    return 2 * entries + SCALE_BITS * bucket_count(entries, settings["bucket_size"])


def variance_bound(settings: Settings, entries: int) -> float:
    """``omega = sqrt(n) - 1`` for buckets of ``n`` entries (see the module docstring)."""
    bucket = settings["bucket_size"]
    n = entries if bucket is None else min(bucket, entries)
    return float(np.sqrt(n) - 1.0)


def check(settings: Settings, prefix: str) -> None:
    check_integer(settings, "bucket_size", prefix, 1, optional=True)


PIECE = Quantizer(
    name="terngrad",
    encode=encode,
    bits=bits,
    uses_key=True,
    raises_norm="terngrad is unbiased: its rounding adds variance to the norm",
    downlink=True,
    variance_bound=variance_bound,
    check=check,
    configure=lambda settings: {"bucket_size": settings["bucket_size"]},
)


def register() -> Quantizer:
    """Adds TernGrad to the registry for this process (``registry.unregister("terngrad")``
    removes it)."""
    return registry.register(PIECE, DEFAULTS)


if __name__ == "__main__":
    from fedbench.compression import build_compression

    register()
    compressor = build_compression({"name": "terngrad"})
    x = {"w": jnp.linspace(-1.0, 1.0, 8)}
    sent, message = compressor.compress(x, jax.random.PRNGKey(0))
    print(compressor, "\n", sent["w"], f"\n{message} bits (dense: {32 * 8})")
