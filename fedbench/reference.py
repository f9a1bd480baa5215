"""Sequential reference implementation: plain Python loops over rounds, clients and steps.

It shares nothing with :mod:`fedbench.simulator` but the key schedule (round ``r`` uses
``fold_in(run_key, r)``; clients are drawn with ``jax.random.choice`` without replacement; epoch
``e`` of a client orders its ``n`` examples by ``argsort(uniform(fold_in(client_key, e), (n,)))``).
No padding, no masks, no vmap/scan: each client trains on its own unpadded arrays with one
Python-level SGD step per minibatch. Tests check the vectorised simulator against it; it is slow
by design and meant for small problems only.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedbench.algorithm import Algorithm
from fedbench.dataset.federated import FederatedData


@functools.lru_cache(maxsize=64)
def _grad_fn(apply_fn):
    """Jitted gradient of the mean minibatch cross-entropy (cached per model)."""

    def loss_fn(p, xb, yb):
        logits = apply_fn(p, xb)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yb))

    return jax.jit(jax.grad(loss_fn))


def client_sgd(
    apply_fn,
    params,
    x: np.ndarray,
    y: np.ndarray,
    key: jax.Array,
    *,
    lr: float,
    local_epochs: int,
    batch_size: int,
    prox_mu: float = 0.0,
) -> tuple[Any, int]:
    """Local SGD of one client, one minibatch at a time. Returns ``(params, steps_taken)``."""
    anchor = params
    grad_fn = _grad_fn(apply_fn)
    n = len(y)
    steps = 0
    for epoch in range(local_epochs):
        order = np.argsort(np.asarray(jax.random.uniform(jax.random.fold_in(key, epoch), (n,))))
        for b in range(math.ceil(n / batch_size)):
            idx = order[b * batch_size : (b + 1) * batch_size]
            grads = grad_fn(params, jnp.asarray(x[idx]), jnp.asarray(y[idx]))
            if prox_mu:
                grads = jax.tree.map(lambda g, p, a: g + prox_mu * (p - a), grads, params, anchor)
            params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
            steps += 1
    return params, steps


def run_reference(
    apply_fn,
    algorithm: Algorithm,
    data: FederatedData,
    params,
    run_key: jax.Array,
    rounds: int,
    *,
    clients_per_round: int,
    lr: float,
    local_epochs: int,
    batch_size: int,
    start_round: int = 0,
):
    """Runs ``rounds`` rounds of a federated algorithm (``kind == "federated"``) or ``local``.

    Args:
      params: initial server parameters (for ``local``: a list of per-client parameters).
      run_key: the base key (``ServerState.key`` of the simulator).

    Returns:
      ``(params, history)``; history lists, per round, the sampled ids and per-client steps.
    """
    if algorithm.full_batch:
        local_epochs, batch_size = 1, data.max_train
    opt_state = algorithm.server_optimizer.init(params) if algorithm.kind == "federated" else None
    history = []
    for r in range(start_round, start_round + rounds):
        sample_key, clients_key = jax.random.split(jax.random.fold_in(run_key, r))
        if algorithm.kind == "local":
            keys = jax.random.split(clients_key, data.num_clients)
            new, steps = [], []
            for c in range(data.num_clients):
                x, y = data.client_train(c)
                p, s = client_sgd(
                    apply_fn, params[c], x, y, keys[c], lr=lr,
                    local_epochs=local_epochs, batch_size=batch_size,
                )
                new.append(p)
                steps.append(s)
            params = new
            history.append({"ids": list(range(data.num_clients)), "steps": steps})
            continue
        ids = [int(i) for i in jax.random.choice(
            sample_key, data.num_clients, (clients_per_round,), replace=False
        )]
        keys = jax.random.split(clients_key, len(ids))
        total = 0
        weighted_sum = jax.tree.map(lambda p: np.zeros(p.shape, np.float64), params)
        steps = []
        for key, c in zip(keys, ids):
            x, y = data.client_train(c)
            local, s = client_sgd(
                apply_fn, params, x, y, key, lr=lr, local_epochs=local_epochs,
                batch_size=batch_size, prox_mu=algorithm.prox_mu,
            )
            steps.append(s)
            weighted_sum = jax.tree.map(
                lambda acc, new, old: acc + len(y) * (np.asarray(new, np.float64) - np.asarray(old)),
                weighted_sum, local, params,
            )
            total += len(y)
        mean_delta = jax.tree.map(lambda s: jnp.asarray(s / total, jnp.float32), weighted_sum)
        updates, opt_state = algorithm.server_optimizer.update(
            jax.tree.map(jnp.negative, mean_delta), opt_state, params
        )
        params = optax.apply_updates(params, updates)
        history.append({"ids": ids, "steps": steps})
    return params, history
