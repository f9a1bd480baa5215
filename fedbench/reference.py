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


def _cox_nll_loop(scores, target):
    """Negative Breslow partial log-likelihood averaged over the batch, one term at a time."""
    s = scores.reshape(-1)
    total = 0.0
    for i in range(s.shape[0]):
        at_risk = target[:, 1] >= target[i, 1]
        term = jnp.log(jnp.sum(jnp.where(at_risk, jnp.exp(s), 0.0))) - s[i]
        total = total + target[i, 0] * term
    return total / s.shape[0]


@functools.lru_cache(maxsize=64)
def _grad_fn(apply_fn, task: str = "classification"):
    """Jitted gradient of the mean minibatch loss (cached per model and task)."""

    def loss_fn(p, xb, yb):
        out = apply_fn(p, xb)
        if task == "survival":
            return _cox_nll_loop(out, yb)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, yb))

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
    correction=None,
    task: str = "classification",
    local_steps: int | None = None,
) -> tuple[Any, int]:
    """Local SGD of one client, one minibatch at a time. Returns ``(params, steps_taken)``.

    ``correction`` (SCAFFOLD's ``c - c_i``) is added to every minibatch gradient. With
    ``local_steps`` the client runs epochs until it has taken exactly that many steps.
    """
    anchor = params
    grad_fn = _grad_fn(apply_fn, task)
    n = len(y)
    steps = 0
    epochs = local_epochs if local_steps is None else math.ceil(local_steps / math.ceil(n / batch_size))
    for epoch in range(epochs):
        order = np.argsort(np.asarray(jax.random.uniform(jax.random.fold_in(key, epoch), (n,))))
        for b in range(math.ceil(n / batch_size)):
            if local_steps is not None and steps == local_steps:
                break
            idx = order[b * batch_size : (b + 1) * batch_size]
            grads = grad_fn(params, jnp.asarray(x[idx]), jnp.asarray(y[idx]))
            if prox_mu:
                grads = jax.tree.map(lambda g, p, a: g + prox_mu * (p - a), grads, params, anchor)
            if correction is not None:
                grads = jax.tree.map(lambda g, c: g + c, grads, correction)
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
    stragglers=None,
    local_steps: int | None = None,
):
    """Runs ``rounds`` rounds of a federated algorithm (``kind == "federated"``) or ``local``.

    Covers FedSGD, FedAvg, FedProx, the FedOpt family, FedNova, SCAFFOLD, FedAvgM, FedDyn and
    stragglers, each written out directly: example-weighted mean of the kept clients' deltas
    (FedNova: scaled by ``tau_eff / tau_i``), SCAFFOLD's option II control variates in a dict per
    client; FedAvgM's server momentum (Hsu et al. 2019: ``v <- beta v - Delta``,
    ``w <- w - eta v``) and FedDyn (Acar et al. 2021, Algorithm 1: per-client ``g_k``, server
    ``h``, uniform mean of the participants' models) written from the papers, in float64,
    without the algorithm's optax objects.

    Args:
      params: initial server parameters (for ``local``: a list of per-client parameters).
      run_key: the base key (``ServerState.key`` of the simulator).
      stragglers: a :class:`fedbench.simulator.Stragglers` or ``None``.

    Returns:
      ``(params, history)``; history lists, per round, the sampled ids, kept ids, per-client
      steps, and for SCAFFOLD the final ``controls`` as ``(server_c, {client: c_i})``.
    """
    from fedbench.simulator import straggler_plan

    if algorithm.full_batch:
        local_epochs, batch_size = 1, data.max_train
    opt_state = algorithm.server_optimizer.init(params) if algorithm.kind == "federated" else None
    zeros = jax.tree.map(lambda p: np.zeros(p.shape, np.float64), params)
    server_c, client_c = zeros, {}
    momentum = zeros  # FedAvgM's velocity
    dyn_h, dyn_g = zeros, {}  # FedDyn's server state h and per-client g_k
    alpha = float(algorithm.settings.get("alpha", 0.0))
    history = []
    for r in range(start_round, start_round + rounds):
        round_key = jax.random.fold_in(run_key, r)
        sample_key, clients_key = jax.random.split(round_key)
        if algorithm.kind == "local":
            keys = jax.random.split(clients_key, data.num_clients)
            new, steps = [], []
            for c in range(data.num_clients):
                x, y = data.client_train(c)
                p, s = client_sgd(
                    apply_fn, params[c], x, y, keys[c], lr=lr,
                    local_epochs=local_epochs, batch_size=batch_size,
                    task=data.task, local_steps=local_steps,
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
        epochs, keep = straggler_plan(
            jax.random.fold_in(round_key, 0x57A6), len(ids), local_epochs, stragglers
        )
        kept, deltas, sizes, steps = [], [], [], []
        for j, (key, c) in enumerate(zip(keys, ids)):
            if not bool(keep[j]):
                continue  # a dropped straggler's update never arrives
            x, y = data.client_train(c)
            correction, prox_mu = None, algorithm.prox_mu
            if algorithm.name == "feddyn":  # grad - g_k + alpha (w - w_server)
                prox_mu = alpha
                correction = jax.tree.map(lambda g: jnp.asarray(-g, jnp.float32),
                                          dyn_g.get(c, zeros))
            if algorithm.scaffold:
                ci = client_c.get(c, zeros)
                correction = jax.tree.map(
                    lambda a, b: jnp.asarray(a - b, jnp.float32), server_c, ci
                )
            local, s = client_sgd(
                apply_fn, params, x, y, key, lr=lr, local_epochs=int(epochs[j]),
                batch_size=batch_size, prox_mu=prox_mu, correction=correction,
                task=data.task, local_steps=local_steps,
            )
            kept.append(c)
            deltas.append(jax.tree.map(
                lambda new, old: np.asarray(new, np.float64) - np.asarray(old, np.float64),
                local, params,
            ))
            sizes.append(len(y))
            steps.append(s)
        total = sum(sizes)
        mean_delta = zeros
        if total:
            p = [n / total for n in sizes]
            if algorithm.normalized:
                tau_eff = sum(pi * t for pi, t in zip(p, steps))
                coef = [tau_eff * pi / t for pi, t in zip(p, steps)]
            else:
                coef = p
            for a, d in zip(coef, deltas):
                mean_delta = jax.tree.map(lambda m, di, a=a: m + a * di, mean_delta, d)
        if algorithm.scaffold:
            dcs = []
            for c, d, k in zip(kept, deltas, steps):
                dc = jax.tree.map(lambda sc, di, k=k: -sc - di / (k * lr), server_c, d)
                client_c[c] = jax.tree.map(np.add, client_c.get(c, zeros), dc)
                dcs.append(dc)
            for dc in dcs:
                server_c = jax.tree.map(lambda sc, d: sc + d / data.num_clients, server_c, dc)
        if algorithm.name == "fedavgm":
            beta, eta = algorithm.settings["momentum"], algorithm.settings["server_lr"]
            momentum = jax.tree.map(lambda v, d: beta * v - d, momentum, mean_delta)
            params = jax.tree.map(lambda w, v: jnp.asarray(np.asarray(w, np.float64) - eta * v,
                                                           jnp.float32), params, momentum)
            history.append({"ids": ids, "kept": kept, "steps": steps})
            continue
        if algorithm.name == "feddyn":
            uniform = zeros
            for d in deltas:
                uniform = jax.tree.map(lambda u, di: u + di / max(len(deltas), 1), uniform, d)
            for c, d in zip(kept, deltas):
                dyn_g[c] = jax.tree.map(lambda g, di: g - alpha * di, dyn_g.get(c, zeros), d)
                dyn_h = jax.tree.map(lambda h, di: h - alpha * di / data.num_clients, dyn_h, d)
            params = jax.tree.map(
                lambda w, u, h: jnp.asarray(np.asarray(w, np.float64) + u - h / alpha, jnp.float32),
                params, uniform, dyn_h,
            )
            history.append({"ids": ids, "kept": kept, "steps": steps})
            continue
        mean_delta = jax.tree.map(lambda m: jnp.asarray(m, jnp.float32), mean_delta)
        updates, opt_state = algorithm.server_optimizer.update(
            jax.tree.map(jnp.negative, mean_delta), opt_state, params
        )
        params = optax.apply_updates(params, updates)
        history.append({"ids": ids, "kept": kept, "steps": steps,
                        "controls": (server_c, dict(client_c))})
    return params, history


def run_fedbuff_reference(
    apply_fn,
    algorithm: Algorithm,
    data: FederatedData,
    params,
    run_key: jax.Array,
    updates: int,
    *,
    lr: float,
    local_epochs: int,
    batch_size: int,
    speeds: np.ndarray,
):
    """Event-driven FedBuff (Nguyen et al. 2022, Algorithm 1), one job object per client in flight.

    Jobs finish at ``start + local steps * seconds per step of their site``; the server takes
    the ``buffer_size`` earliest, weights each delta by ``n_i / sum n * 1 / sqrt(1 + staleness)``
    and starts as many new jobs from the new model, drawn uniformly among idle clients (with the
    simulator's key schedule). Returns ``(params, log)``, ``log`` one dict per server update.
    """
    k, m = algorithm.buffer_size, algorithm.concurrency
    speeds = np.asarray(speeds, np.float32)

    def duration(c: int) -> np.float32:
        n = int(data.train_counts[c])
        return np.float32(math.ceil(n / batch_size) * local_epochs) * speeds[c]

    sample_key, clients_key = jax.random.split(jax.random.fold_in(run_key, 0))
    first = [int(i) for i in jax.random.choice(sample_key, data.num_clients, (m,), replace=False)]
    keys = jax.random.split(clients_key, m)
    jobs = [{"client": c, "key": keys[j], "params": params, "version": 0, "finish": duration(c)}
            for j, c in enumerate(first)]
    opt_state = algorithm.server_optimizer.init(params)
    clock, version, log = np.float32(0), 0, []
    for _ in range(updates):
        done = sorted(range(m), key=lambda j: (jobs[j]["finish"], j))[:k]
        total = sum(int(data.train_counts[jobs[j]["client"]]) for j in done)
        mean_delta = jax.tree.map(lambda p: np.zeros(p.shape, np.float64), params)
        stale = []
        for j in done:
            job = jobs[j]
            x, y = data.client_train(job["client"])
            local, _ = client_sgd(apply_fn, job["params"], x, y, job["key"], lr=lr,
                                  local_epochs=local_epochs, batch_size=batch_size)
            tau = version - job["version"]
            stale.append(tau)
            weight = len(y) / total / math.sqrt(1 + tau)
            mean_delta = jax.tree.map(
                lambda acc, a, b, w=weight: acc + w * (np.asarray(a, np.float64) - np.asarray(b)),
                mean_delta, local, job["params"],
            )
        mean_delta = jax.tree.map(lambda d: jnp.asarray(d, jnp.float32), mean_delta)
        upd, opt_state = algorithm.server_optimizer.update(
            jax.tree.map(jnp.negative, mean_delta), opt_state, params
        )
        params = optax.apply_updates(params, upd)
        clock = max(jobs[j]["finish"] for j in done)
        version += 1
        sample_key, clients_key = jax.random.split(jax.random.fold_in(run_key, version))
        if k == m:
            new = [int(i) for i in jax.random.choice(sample_key, data.num_clients, (k,), replace=False)]
        else:
            busy = {jobs[j]["client"] for j in range(m) if j not in done}
            scores = np.asarray(jax.random.gumbel(sample_key, (data.num_clients,)))
            new = [int(c) for c in np.argsort(-scores) if int(c) not in busy][:k]
        keys = jax.random.split(clients_key, k)
        for idx, j in enumerate(done):
            c = new[idx]
            jobs[j] = {"client": c, "key": keys[idx], "params": params, "version": version,
                       "finish": np.float32(clock + duration(c))}
        log.append({"clock": float(clock), "staleness": stale})
    return params, log
