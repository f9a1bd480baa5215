"""Record-level DP-SGD inside every client (``privacy=dp_sample``).

Every local step of every client is DP-SGD (Abadi et al. 2016, Algorithm 1; the estimator is
:func:`fedbench.privacy.dp_sgd.dp_sgd_estimator`): Poisson-sampled examples, each example's
gradient clipped to ``clip``, Gaussian noise ``noise_multiplier * clip`` on the sum. The
neighbouring relation is adding or removing one training example of one client; client ``i``
with ``n_i`` examples runs ``local_epochs * ceil(n_i / batch_size)`` steps at rate
``q_i = min(1, batch_size / n_i)`` per round it takes part in, and the reported epsilon is the
worst client's over the steps each client actually took (``ServerState.dp_steps``). The
accounting treats every client's size ``n_i`` as public (``SampleDP.assumes_public``): ``q_i``,
the step counts and the aggregation weights are computed from it. The server's
aggregation is the algorithm's own (post-processing of DP outputs): this mechanism does not wrap
it. An algorithm is refused where anything else shapes the released model
(``Algorithm.dp_sample``, :func:`fedbench.algorithm.base.check_sample_dp`).

References:
  M. Abadi, A. Chu, I. Goodfellow, H. B. McMahan, I. Mironov, K. Talwar, L. Zhang. "Deep
  Learning with Differential Privacy", CCS 2016, Algorithm 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from fedbench.algorithm.base import check_sample_dp
from fedbench.errors import ConfigError
from fedbench.privacy.accounting import calibrate_noise_worst, worst_account
from fedbench.privacy.dp_sgd import dp_sgd_estimator
from fedbench.privacy.mechanism import BuildContext, Mechanism
from fedbench.privacy.mechanisms import poisson_buffer_size


@dataclasses.dataclass(frozen=True)
class SampleDP(Mechanism):
    """Record-level DP-SGD inside every client (see the module docstring).

    Attributes:
      clip: L2 bound on each example's gradient.
      noise_multiplier: noise std / clip, per local step.
      buffer: slots for a Poisson batch (overflow is counted and reported as an error).
    """

    clip: float
    noise_multiplier: float
    buffer: int

    name = "dp_sample"
    unit = "example"
    hyperparameters = ("noise_multiplier", "clip", "target_epsilon")
    alternatives = (("target_epsilon", "noise_multiplier"),)  # either one sets the noise
    identity = {"clip": 1e6, "target_epsilon": None, "noise_multiplier": 0}
    # The reported epsilon is the worst client's, found from every client's size.
    uncovered = ("epsilon", "worst_client_sampling_rate", "worst_client_steps")
    # q_i = B / n_i, the step counts and the aggregation weights are computed from n_i, and
    # adding or removing one example changes them: the accounting holds only with n_i public.
    assumes_public = (
        "every client's number of training examples n_i (its example sampling rate q_i = "
        "batch_size / n_i, its DP-SGD steps per round and its weight in the aggregate are "
        "computed from n_i, and adding or removing one example changes them)",)

    @classmethod
    def check_algorithm(cls, algorithm) -> None:
        check_sample_dp(algorithm)

    @classmethod
    def check_run(cls, cfg: Mapping[str, Any], settings, task: str) -> None:
        """DP-SGD's accounting needs per-example losses and whole epochs.

        Raises:
          ConfigError: a survival task (the Cox partial likelihood is not a sum of per-example
            losses, so per-example clipping would not bound sensitivity), or ``local_steps``
            set (DP-SGD is accounted per epoch).
        """
        if task == "survival":
            raise ConfigError(
                "privacy.name", cls.name,
                "none or dp_client for survival data (the Cox partial likelihood is not a sum of "
                "per-example losses, so DP-SGD's per-example clipping would not bound "
                "sensitivity)",
            )
        if settings.local_steps is not None:
            raise ConfigError("local_steps", settings.local_steps,
                              "null with privacy=dp_sample (accounted per epoch)")

    def bind(self, algorithm, settings, stragglers) -> SampleDP:
        self.check_algorithm(algorithm)
        return self

    def estimator(self, apply_fn, batch_size: int, loss_fn, noise_salt):
        """Every local step's gradient: DP-SGD's (same loop and schedule)."""
        return dp_sgd_estimator(apply_fn, batch_size=batch_size, clip=self.clip,
                                noise_multiplier=self.noise_multiplier, buffer=self.buffer,
                                loss_fn=loss_fn, noise_salt=noise_salt)

    def init_state(self, state, num_clients: int):
        """Counts the DP-SGD steps each client took in updates that arrived."""
        return state.replace(dp_steps=jnp.zeros((num_clients,), jnp.int32))

    def carried(self) -> dict[str, float]:
        z = self.noise_multiplier
        return {"clip": self.clip, "noise_std": z * self.clip if z > 0 else 0.0}

    def report(self, plan, rounds: int, participation, steps):
        """The worst client's report over every client that took part (None: none did).
        ``steps``: the DP-SGD steps each client took (default: every participation full)."""
        if steps is None:
            steps = np.asarray(participation) * plan.steps_per_round
        rep = worst_account(self.noise_multiplier, plan.rates, steps, plan.delta,
                            plan.accountant)
        if rep is None:
            return None
        out = {**rep.as_dict(), "unit": "example"}
        out["worst_client_sampling_rate"] = out.pop("sampling_rate")
        out["worst_client_steps"] = out.pop("steps")
        return out

    def describe(self) -> dict[str, Any]:
        return {}


def check(cfg: Mapping[str, Any], accountant: str) -> None:
    """``dp_sample`` always Poisson-samples examples and clips at a fixed bound."""
    sampling = cfg.get("sampling")
    if sampling not in (None, "poisson"):
        raise ConfigError(
            "privacy.sampling", sampling,
            "poisson or unset with privacy=dp_sample (DP-SGD Poisson-samples examples; "
            "fixed-size cohorts are a dp_client setting)",
        )
    adaptive = cfg.get("adaptive_clip") or {}
    if adaptive.get("enabled"):
        raise ConfigError(
            "privacy.adaptive_clip.enabled", adaptive.get("enabled"),
            "false or unset with privacy=dp_sample (adaptive clipping is implemented for "
            "dp_client only)",
        )


def build(cfg: Mapping[str, Any], common: Mapping[str, Any], ctx: BuildContext
          ) -> tuple[SampleDP, dict[str, Any]]:
    """The calibrated mechanism of a ``privacy=dp_sample`` config, and the plan's per-client
    ``client_sizes``, ``steps_per_round`` and ``rates``. Calibration assumes every client takes
    part in every round (a bound whatever clients are sampled: client sampling does not look at
    the data)."""
    sizes = np.asarray(ctx.client_sizes)
    rates = np.minimum(1.0, ctx.batch_size / sizes)
    steps_per_round = ctx.local_epochs * np.ceil(sizes / ctx.batch_size).astype(int)
    noise = common["noise"]
    if noise is None:  # the worst client over the whole run, had it taken part in every round
        noise = calibrate_noise_worst(common["target"], common["delta"], rates,
                                      steps_per_round * ctx.rounds, common["accountant"])
    max_batches = ctx.rounds * ctx.clients_per_round * int(steps_per_round.max())
    buffer = poisson_buffer_size(int(sizes.max()), ctx.batch_size / sizes.max(), max_batches)
    buffer = max(1, min(buffer, int(sizes.max())))
    return SampleDP(common["clip"], noise, buffer), {
        "sampling": "poisson", "client_sizes": sizes, "steps_per_round": steps_per_round,
        "rates": rates}


def population(ctx: BuildContext) -> int:
    """The units of the neighbouring relation (every training example), for the default delta."""
    return int(np.asarray(ctx.client_sizes).sum())


MECHANISM = SampleDP
