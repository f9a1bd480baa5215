"""Canary records through whole DP-SGD runs (``privacy=dp_sample``): a lower bound on the
epsilon of one record.

``dp_sample``'s epsilon protects one training example of one client (adding or removing it,
every client's size ``n_i`` public: :mod:`fedbench.privacy.dp_sample`), so its canaries are
records, scored with Steinke, Nasr and Jagielski's one-run bound (NeurIPS 2023; input-space
canaries, their Sec. 6.1), each included with probability 1/2:

* ``m`` training slots, drawn uniformly among all clients' examples (hospitals host canaries in
  proportion to their size), are given over to canary records: uniform over each feature's
  training range, a uniformly random label (examples unlike any real one, which a model can
  only fit by memorising them). The record that held the slot is left out of every canary run;
* each run is a replica of one compiled program with its own data and seed; canary ``i``'s
  inclusion bit comes from the run's seed. Included, its slot holds its record; excluded, the
  slot holds :data:`fedbench.privacy.dp_sgd.ABSENT_LABEL`: it still counts towards its client's
  ``n_i`` (so the client's sampling rate ``q_i = B / n_i``, its steps and its weight are those
  of the included world) and DP-SGD gives it a zero gradient, so the released model is
  distributed exactly as without the record at the same public ``n_i``: the add/remove relation
  the accountant used;
* the score is black box: the released (server) model's logit-scaled confidence in the canary's
  label (Carlini et al.'s ``phi``).

Black-box bounds are loose: the score sees the record only through what the final model
learned about it, after every other record and all the noise. White-box record canaries (one
example's clipped gradient replaced by ``clip * u_i`` inside DP-SGD's per-example loop) would be
far stronger, but need the client and the canary inside the estimator of every local step,
which the simulator's loop does not pass; they are not implemented.

What the bound is compared with: each canary run's accountant, over the DP-SGD steps each of
its clients actually took (``ServerState.dp_steps``), reports its worst client's epsilon; a
canary record sits at some client, whose epsilon is at most that, so the largest over the runs
bounds every canary's. The sizes are the configured federation's (a canary takes a real
record's slot), so it is the run's own accounting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedbench.audit.canaries import check_algorithm, logit_confidence
from fedbench.errors import ConfigError

PLACES, CONTENT, INCLUSION = 0xCA4D, 0xCA4E, 0xCA4F


def default_records(total: int) -> int:
    """Canary records when ``audit.epsilon.run.records`` is null: 100, or a tenth of the
    training examples if fewer."""
    return max(2, min(100, total // 10))


def check_records(cfg: Mapping[str, Any], num_records: Any, total: int | None = None) -> None:
    """Canary records audit record-level DP-SGD (``dp_sample``); ``total``: the training
    examples (None: not known yet, the count is checked later)."""
    name = (cfg.get("privacy") or {}).get("name", "none")
    if name != "dp_sample":
        raise ConfigError("privacy.name", name, "dp_sample for canary records (they audit "
                          "one record; canary sites audit one site: fedbench.audit.canaries)")
    if total is None:
        return
    if isinstance(num_records, bool) or not isinstance(num_records, int) or not (
            2 <= num_records <= total // 2):
        raise ConfigError("audit.epsilon.run.records", num_records,
                          f"null or an integer in [2, half the training examples = {total // 2}]")


def place(counts: np.ndarray, num_records: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(client, slot)`` of each canary record: distinct training slots, uniform over every
    client's examples."""
    counts = np.asarray(counts)
    owners = np.repeat(np.arange(len(counts)), counts)
    slots = np.concatenate([np.arange(c) for c in counts])
    chosen = np.random.default_rng([seed, PLACES]).choice(len(owners), num_records,
                                                          replace=False)
    return owners[chosen], slots[chosen]


def run_data(data, where: tuple[np.ndarray, np.ndarray], x: np.ndarray, y: np.ndarray,
             bits: np.ndarray):
    """``data`` with the canary slots holding the included records and the excluded ones
    absent (:data:`~fedbench.privacy.dp_sgd.ABSENT_LABEL`)."""
    from fedbench.privacy.dp_sgd import ABSENT_LABEL

    train_x, train_y = np.array(data.train_x), np.array(data.train_y)
    train_x[where] = x
    train_y[where] = np.where(bits, y, ABSENT_LABEL)
    return data.replace(train_x=jnp.asarray(train_x), train_y=jnp.asarray(train_y))


def record_scores(cfg: Mapping[str, Any], num_records: int | None, seeds: Sequence[int],
                  axis: str = "map") -> dict[str, Any]:
    """Runs ``cfg`` once per seed (replicas of one program, each with its own data) with
    ``num_records`` canary records (null: :func:`default_records`); returns per run the
    included and excluded records' scores, and the largest epsilon the runs' accountants
    report."""
    from fedbench.dataset.federated import FederatedData
    from fedbench.replicas import run_values
    from fedbench.run import build_simulator

    check_records(cfg, num_records)
    built = build_simulator(cfg)
    sim, data = built.sim, built.sim.data
    counts = np.asarray(data.train_counts)
    total = int(counts.sum())
    num_records = default_records(total) if num_records is None else num_records
    check_records(cfg, num_records, total)
    check_algorithm(sim, cfg)
    if not isinstance(data, FederatedData) or data.task != "classification":
        raise ConfigError("dataset.name", cfg["dataset"]["name"],
                          "a classification dataset in padded storage for canary records")
    rng = np.random.default_rng([int(cfg["seed"]), CONTENT])
    pooled, _ = data.pooled_train()
    lo, hi = pooled.min(axis=0), pooled.max(axis=0)
    x = rng.uniform(lo, hi, (num_records,) + lo.shape).astype(np.float32)
    y = rng.integers(0, data.num_classes, num_records).astype(np.int32)
    where = place(counts, num_records, int(cfg["seed"]))
    bits = [np.random.default_rng([int(s), INCLUSION]).random(num_records) < 0.5 for s in seeds]
    runs_data = [run_data(data, where, x, y, b) for b in bits]
    payload = jax.tree.map(lambda *a: jnp.stack(a), *runs_data)
    values = run_values(cfg, built.privacy)
    start = sim.init_replicas(list(seeds), [values] * len(seeds))
    end = sim.run_replicas(start, int(cfg["rounds"]), axis, payload)
    score = jax.jit(lambda params: logit_confidence(sim.apply_fn(params, jnp.asarray(x)),
                                                    jnp.asarray(y)))
    runs, epsilons, delta = [], [], None
    for r, b in enumerate(bits):
        last = sim.replica(end, r)
        phi = np.asarray(score(last.params))
        runs.append({"in": phi[b], "out": phi[~b]})
        report = built.privacy.report(int(cfg["rounds"]), np.asarray(last.participation),
                                      steps=np.asarray(last.dp_steps))
        epsilons.append(float(report["epsilon"]))
        delta = float(report["delta"])
    return {"runs": runs, "claimed_epsilon": max(epsilons), "delta": delta, "unit": "example",
            "noise_multiplier": built.privacy.noise_multiplier, "canaries": num_records,
            "kind": "input", "scale": None, "personal_models": bool(sim.per_client_models)}
