"""Systems heterogeneity: stragglers of a synchronous round (Li et al. 2020, FedProx, Sec. 5.2).

The straggler draw of round ``r`` is keyed by ``fold_in(fold_in(run_key, r), 0x57A6)`` only, so
every algorithm run with the same seed sees the same stragglers.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Stragglers:
    """Systems heterogeneity of Li et al. 2020 (FedProx), Sec. 5.2.

    Attributes:
      fraction: share of each round's sampled clients that are stragglers
        (``round(fraction * clients_per_round)`` of them).
      policy: ``drop``: their updates are discarded (FedAvg's behaviour in the paper);
        ``partial``: each runs a uniformly random number of epochs in ``1 .. E-1`` and its
        update is kept (FedProx's).
    """

    fraction: float = 0.0
    policy: str = "drop"


def straggler_plan(
    key: jax.Array, cohort: int, local_epochs: int, stragglers: Stragglers | None
) -> tuple[jax.Array, jax.Array]:
    """Per-slot ``(epochs [cohort] int32, keep [cohort] bool)`` of one round.

    The key depends only on the run key and the round, so every algorithm run with the same seed
    sees the same stragglers.
    """
    full = jnp.full((cohort,), local_epochs, jnp.int32)
    if stragglers is None or stragglers.fraction == 0:
        return full, jnp.ones((cohort,), bool)
    choose_key, epochs_key = jax.random.split(key)
    count = int(round(stragglers.fraction * cohort))
    chosen = jax.random.permutation(choose_key, cohort)[:count]
    is_straggler = jnp.zeros((cohort,), bool).at[chosen].set(True)
    if stragglers.policy == "drop":
        return full, ~is_straggler
    partial = jax.random.randint(epochs_key, (cohort,), 1, max(local_epochs, 2))
    return jnp.where(is_straggler, partial, full).astype(jnp.int32), jnp.ones((cohort,), bool)
