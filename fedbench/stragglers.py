"""Systems heterogeneity: stragglers of a synchronous round (Li et al. 2020, FedProx, Sec. 5.2).

The straggler draw of round ``r`` is keyed by ``fold_in(fold_in(run_key, r), 0x57A6)`` only, so
every algorithm run with the same seed sees the same stragglers.

Two ways to draw them. By default a fixed number, ``round(fraction * cohort)``, of each round's
cohort straggles (Li et al.'s setting). Under client-level DP with a Poisson-sampled cohort each
sampled client straggles independently with probability ``fraction`` instead
(``independent=True``): with a fixed count one client's survival depends on which others were
sampled (adding a client to the cohort changes every other client's chance to be dropped), so
the add/remove analysis of the Poisson-sampled Gaussian mechanism, which treats every client's
inclusion as an independent event, does not formally apply. Independent drops keep each
client's inclusion an independent Bernoulli(``q * (1 - fraction)``) event (accounted with the
larger ``q``, an upper bound), and the expected number of updates that arrive,
``q * num_clients * (1 - fraction)``, is data independent (:func:`report_share`).
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
    key: jax.Array, cohort: int, local_epochs: int, stragglers: Stragglers | None,
    independent: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Per-slot ``(epochs [cohort] int32, keep [cohort] bool)`` of one round.

    ``independent``: each slot straggles independently with probability ``fraction`` (for
    Poisson-sampled cohorts under client-level DP, see the module docstring); otherwise exactly
    ``round(fraction * cohort)`` slots straggle. The key depends only on the run key and the
    round, so every algorithm run with the same seed sees the same stragglers.
    """
    full = jnp.full((cohort,), local_epochs, jnp.int32)
    if stragglers is None or stragglers.fraction == 0:
        return full, jnp.ones((cohort,), bool)
    choose_key, epochs_key = jax.random.split(key)
    if independent:
        is_straggler = jax.random.bernoulli(choose_key, stragglers.fraction, (cohort,))
    else:
        count = int(round(stragglers.fraction * cohort))
        chosen = jax.random.permutation(choose_key, cohort)[:count]
        is_straggler = jnp.zeros((cohort,), bool).at[chosen].set(True)
    if stragglers.policy == "drop":
        return full, ~is_straggler
    partial = jax.random.randint(epochs_key, (cohort,), 1, max(local_epochs, 2))
    return jnp.where(is_straggler, partial, full).astype(jnp.int32), jnp.ones((cohort,), bool)


def report_share(stragglers: Stragglers | None, cohort: int, independent: bool) -> float:
    """The expected share of a round's sampled clients whose update arrives: ``1 - fraction``
    for independent drops, ``(cohort - round(fraction * cohort)) / cohort`` for a fixed count of
    ``cohort`` slots, 1 without dropped stragglers. It depends on the settings only, never on
    the data: client-level DP divides by ``expected cohort * report_share``."""
    if stragglers is None or stragglers.policy != "drop" or stragglers.fraction == 0:
        return 1.0
    if independent:
        return 1.0 - stragglers.fraction
    return (cohort - int(round(stragglers.fraction * cohort))) / cohort
