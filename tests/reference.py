"""Sequential reference implementation: plain Python loops over rounds, clients and steps.

It shares nothing with :mod:`fedbench.simulator` or the algorithms' code but the key schedule,
which it writes out itself (round ``r`` uses ``fold_in(run_key, r)``; clients are drawn with
``jax.random.choice`` without replacement; epoch ``e`` of a client orders its ``n`` examples by
``argsort(uniform(fold_in(client_key, e), (n,)))``; the straggler draw and FedBuff's arrivals
use the ``jax.random`` calls listed where they are made). No padding, masks, vmap/scan or optax
optimiser: each client trains on its own unpadded arrays, one Python-level SGD step per
minibatch; every server update is written out from its paper in float64 NumPy from the
algorithm's ``settings``. Slow by design, for small problems only.
"""

from __future__ import annotations

import functools
import heapq
import math
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

if TYPE_CHECKING:  # argument types only: nothing of the code it checks runs here
    from fedbench.algorithm import Algorithm
    from fedbench.dataset.federated import FederatedData


def _cox_nll_loop(scores, target):
    """Negative Breslow partial log-likelihood averaged over the batch, one term at a time."""
    s, total = scores.reshape(-1), 0.0
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
    """Local SGD of one client, one minibatch at a time; ``(params, steps_taken)``. ``correction``
    (SCAFFOLD's ``c - c_i``) is added to every gradient; ``local_steps``: exactly that many steps.
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


FEDOPT = {"fedadam": "adam", "fedyogi": "yogi", "fedadagrad": "adagrad"}
SGD_SERVERS = ("fedsgd", "fedavg", "fedprox", "scaffold", "fednova")  # w <- w + eta * Delta


_f64 = functools.partial(jax.tree.map, lambda p: np.asarray(p, np.float64))
_f32 = functools.partial(jax.tree.map, lambda p: jnp.asarray(p, jnp.float32))


def _combine(coefs, trees, like):
    """``sum_i coefs[i] * trees[i]`` in float64 (zeros shaped like ``like`` if empty)."""
    out = jax.tree.map(lambda p: np.zeros(np.shape(p), np.float64), like)
    for a, tree in zip(coefs, trees):
        out = jax.tree.map(lambda o, t, a=a: o + a * t, out, tree)
    return out


def straggler_draw(key: jax.Array, cohort: int, local_epochs: int, stragglers):
    """Li et al. 2020 (FedProx, Sec. 5.2): which of the ``cohort`` slots straggle and how many
    epochs each runs, as ``(epochs, keep)`` lists.

    Written from the description, with the simulator's random draws: ``choose_key, epochs_key =
    split(key)``; the ``round(fraction * cohort)`` stragglers are the first entries of
    ``permutation(choose_key, cohort)``; under ``drop`` they are discarded, under ``partial``
    slot ``j`` runs ``randint(epochs_key, (cohort,), 1, max(E, 2))[j]`` epochs.
    """
    epochs, keep = [local_epochs] * cohort, [True] * cohort
    if stragglers is None or stragglers.fraction == 0:
        return epochs, keep
    choose_key, epochs_key = jax.random.split(key)
    count = int(round(stragglers.fraction * cohort))
    chosen = [int(j) for j in np.asarray(jax.random.permutation(choose_key, cohort))[:count]]
    if stragglers.policy == "drop":
        return epochs, [j not in chosen for j in range(cohort)]
    draws = np.asarray(jax.random.randint(epochs_key, (cohort,), 1, max(local_epochs, 2)))
    return [int(draws[j]) if j in chosen else local_epochs for j in range(cohort)], keep


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

    Each algorithm is written out from its paper, in float64, from ``algorithm.name`` and
    ``algorithm.settings`` alone (no optax object, no function of the algorithm's module):

    * FedSGD, FedAvg, FedProx (McMahan et al. 2017; Li et al. 2020): ``w <- w + Delta``, with
      ``Delta = sum_k n_k / n delta_k`` over the clients whose update arrived;
    * FedAdagrad / FedAdam / FedYogi (Reddi et al. 2021, Algorithm 2): ``m <- b1 m + (1 - b1)
      Delta``; ``v <- v + Delta^2`` | ``b2 v + (1 - b2) Delta^2`` | ``v - (1 - b2) Delta^2
      sign(v - Delta^2)``; ``w <- w + eta m / (sqrt(v) + tau)``, ``m_0 = 0``, ``v_0 = tau^2``;
    * SCAFFOLD (Karimireddy et al. 2020, Algorithm 1, option II): per-client ``c_i`` in a dict;
      ``Delta x`` the uniform mean of the deltas (``weighting: uniform``, line 16) or their
      example-weighted mean (``examples``); ``w <- w + eta_g Delta x``, ``c <- c + sum dc_i / N``;
    * FedNova (Wang et al. 2020, Eq. 6-7): ``w <- w + eta tau_eff sum_i p_i delta_i / tau_i``;
    * FedAvgM (Hsu et al. 2019): ``v <- beta v - Delta``, ``w <- w - eta v``;
    * FedExP (Jhunjhunwala et al. 2023, Algorithm 1): ``w <- w + eta_g Delta`` with
      ``eta_g = max(1, sum_i p_i ||delta_i||^2 / (2 (||Delta||^2 + epsilon)))``;
    * q-FedAvg (Li et al. 2020, Algorithm 2): ``F_k`` the client's mean training cross-entropy
      at ``w`` (float64, NumPy), ``L = 1 / lr``, ``Delta w_k = L (w - wbar_k)``,
      ``h_k = q F_k^(q-1) ||Delta w_k||^2 + L F_k^q``, ``w <- w - sum F_k^q Delta w_k / sum h_k``;
    * FedDyn (Acar et al. 2021, Algorithm 1): per-client ``g_k``, server ``h``, uniform mean of
      the participants' models;
    * stragglers (:func:`straggler_draw`): a dropped straggler's update never arrives.

    ``params``: initial server parameters (``local``: a list of per-client ones); ``run_key``:
    the simulator's ``ServerState.key``; ``stragglers``: ``fraction`` and ``policy``, or None.

    Returns:
      ``(params, history)``; history lists, per round, the sampled ids, kept ids, per-client
      steps, and for SCAFFOLD the final ``controls`` as ``(server_c, {client: c_i})``.
    """
    name, settings = algorithm.name, dict(algorithm.settings)
    if name == "fedsgd":  # one full-batch gradient step per client per round
        local_epochs, batch_size = 1, data.max_train
    server_lr = float(settings.get("server_lr", 1.0))
    prox_mu = float(settings.get("mu", 0.0)) if name == "fedprox" else 0.0
    alpha = float(settings.get("alpha", 0.0))
    zeros = jax.tree.map(lambda p: np.zeros(np.shape(p), np.float64), params)
    server_c, client_c = zeros, {}  # SCAFFOLD's c and c_i
    moment1 = moment2 = velocity = None  # FedOpt's m and v; FedAvgM's v
    if name in FEDOPT:
        tau = float(settings["tau"])
        moment1 = zeros
        moment2 = jax.tree.map(lambda z: np.full_like(z, tau**2), zeros)
    if name == "fedavgm":
        velocity = zeros
    dyn_h, dyn_g = zeros, {}  # FedDyn's server state h and per-client g_k
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
        epochs, keep = straggler_draw(
            jax.random.fold_in(round_key, 0x57A6), len(ids), local_epochs, stragglers
        )
        kept, deltas, sizes, steps, losses = [], [], [], [], []
        for j, (key, c) in enumerate(zip(keys, ids)):
            if not keep[j]:
                continue  # a dropped straggler's update never arrives
            x, y = data.client_train(c)
            if name == "qffl":  # F_k(w^t): mean cross-entropy of the received model, float64
                out = np.asarray(apply_fn(params, x), np.float64)
                out = out - out.max(axis=1, keepdims=True)
                logp = out - np.log(np.exp(out).sum(axis=1, keepdims=True))
                losses.append(float(-np.mean(logp[np.arange(len(y)), np.asarray(y)])))
            correction, mu = None, prox_mu
            if name == "feddyn":  # grad - g_k + alpha (w - w_server)
                mu = alpha
                correction = jax.tree.map(lambda g: jnp.asarray(-g, jnp.float32),
                                          dyn_g.get(c, zeros))
            if name == "scaffold":  # grad + c - c_i
                ci = client_c.get(c, zeros)
                correction = jax.tree.map(
                    lambda a, b: jnp.asarray(a - b, jnp.float32), server_c, ci
                )
            local, s = client_sgd(
                apply_fn, params, x, y, key, lr=lr, local_epochs=epochs[j],
                batch_size=batch_size, prox_mu=mu, correction=correction,
                task=data.task, local_steps=local_steps,
            )
            kept.append(c)
            deltas.append(jax.tree.map(lambda a, b: np.asarray(a, np.float64)
                                       - np.asarray(b, np.float64), local, params))
            sizes.append(len(y))
            steps.append(s)
        total = sum(sizes)
        p = [n / total for n in sizes] if total else []
        uniform = [1 / len(deltas)] * len(deltas)
        w = _f64(params)
        entry = {"ids": ids, "kept": kept, "steps": steps}
        if name == "feddyn":
            mean_model_delta = _combine(uniform, deltas, params)
            for c, d in zip(kept, deltas):
                dyn_g[c] = jax.tree.map(lambda g, di: g - alpha * di, dyn_g.get(c, zeros), d)
                dyn_h = jax.tree.map(lambda h, di: h - alpha * di / data.num_clients, dyn_h, d)
            w = jax.tree.map(lambda w, u, h: w + u - h / alpha, w, mean_model_delta, dyn_h)
        elif name == "fednova":
            tau_eff = sum(pi * t for pi, t in zip(p, steps))
            coef = [tau_eff * pi / max(t, 1) for pi, t in zip(p, steps)]
            w = jax.tree.map(lambda w, d: w + server_lr * d, w, _combine(coef, deltas, params))
        elif name == "scaffold":
            coef = uniform if settings.get("weighting", "uniform") == "uniform" else p
            mean_delta = _combine(coef, deltas, params)
            dcs = []
            for c, d, k in zip(kept, deltas, steps):
                if k == 0:
                    continue  # no local step: c_i stays, nothing to add to c
                dc = jax.tree.map(lambda sc, di, k=k: -sc - di / (k * lr), server_c, d)
                client_c[c] = jax.tree.map(np.add, client_c.get(c, zeros), dc)
                dcs.append(dc)
            for dc in dcs:
                server_c = jax.tree.map(lambda sc, d: sc + d / data.num_clients, server_c, dc)
            w = jax.tree.map(lambda w, d: w + server_lr * d, w, mean_delta)
            entry["controls"] = (server_c, dict(client_c))
        elif name in FEDOPT:
            b1, b2, tau = float(settings["beta1"]), float(settings["beta2"]), float(settings["tau"])
            delta = _combine(p, deltas, params)
            moment1 = jax.tree.map(lambda m, d: b1 * m + (1 - b1) * d, moment1, delta)
            if FEDOPT[name] == "adagrad":
                moment2 = jax.tree.map(lambda v, d: v + d * d, moment2, delta)
            elif FEDOPT[name] == "adam":
                moment2 = jax.tree.map(lambda v, d: b2 * v + (1 - b2) * d * d, moment2, delta)
            else:
                moment2 = jax.tree.map(
                    lambda v, d: v - (1 - b2) * d * d * np.sign(v - d * d), moment2, delta)
            w = jax.tree.map(lambda w, m, v: w + server_lr * m / (np.sqrt(v) + tau),
                             w, moment1, moment2)
        elif name == "fedavgm":
            beta = float(settings["momentum"])
            delta = _combine(p, deltas, params)
            velocity = jax.tree.map(lambda v, d: beta * v - d, velocity, delta)
            w = jax.tree.map(lambda w, v: w - server_lr * v, w, velocity)
        elif name == "fedexp":  # Jhunjhunwala et al. 2023, Algorithm 1, weights p_i
            delta = _combine(p, deltas, params)

            def sq(tree):
                return sum(float(np.sum(np.square(x))) for x in jax.tree.leaves(tree))

            spread = sum(pi * sq(d) for pi, d in zip(p, deltas))
            eta = max(1.0, spread / (2.0 * (sq(delta) + float(settings["epsilon"]))))
            entry["eta_g"] = eta
            w = jax.tree.map(lambda w, d: w + eta * d, w, delta)
        elif name == "qffl":  # Li et al. 2020, Algorithm 2 (q-FedAvg)
            q, big_l = float(settings["q"]), 1.0 / lr

            def sq(tree):
                return sum(float(np.sum(np.square(x))) for x in jax.tree.leaves(tree))

            fq = [f**q for f in losses]
            dws = [jax.tree.map(lambda d: -big_l * d, d) for d in deltas]  # L (w - wbar_k)
            hs = [q * f ** (q - 1) * sq(dw) + big_l * f**q if q > 0 else big_l * f**q
                  for f, dw in zip(losses, dws)]
            step = _combine([a / sum(hs) for a in fq], dws, params)
            w = jax.tree.map(lambda w, s: w - s, w, step)
        elif name in SGD_SERVERS:
            w = jax.tree.map(lambda w, d: w + server_lr * d, w, _combine(p, deltas, params))
        else:
            raise ValueError(f"no reference server update for {name!r}")
        params = _f32(w)
        history.append(entry)
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
    durations: np.ndarray | None = None,
):
    """Event-driven FedBuff (Nguyen et al. 2022, Algorithm 1): a heap of finish events.

    ``concurrency`` clients train at once; a job finishes at ``start + local steps * seconds
    per step of its site``. The server pops finish events in time order (ties: the lower slot),
    adds each delta to its buffer, and after ``buffer_size`` of them steps ``w <- w + eta sum_i
    n_i s(tau_i) delta_i / sum_i n_i`` with ``s(tau) = 1 / sqrt(1 + tau)`` (float64).

    ``restart`` (``algorithm.settings``): ``at_arrival`` (the paper) starts a new client (drawn
    uniformly among clients not in flight: the argmax of ``gumbel(sample_key, (num_clients,))``
    over them, ``sample_key, client_key = split(fold_in(fold_in(run_key, version), a))`` for
    arrival ``a`` of the buffer) the moment a job finishes, on the model current then (the new
    model for the buffer's last arrival, since the update happens at that instant);
    ``at_flush`` starts the freed slots' clients when the buffer is applied, drawn as a
    synchronous round of the new version would be. The first ``concurrency`` clients are
    ``choice(sample_key, num_clients, (concurrency,), replace=False)`` with ``sample_key,
    clients_key = split(fold_in(run_key, 0))``, trained with ``split(clients_key, concurrency)``.

    ``durations``: each client's job time (worked out by the caller), instead of steps x speed.
    Returns ``(params, log)``, one log dict per server update: ``clock`` (its last arrival's
    time), ``staleness`` and ``clients`` per arrival, ``downloads`` (clients started so far).
    """
    settings = dict(algorithm.settings)
    k, m = int(settings["buffer_size"]), int(settings["concurrency"])
    restart, server_lr = settings.get("restart", "at_arrival"), float(settings["server_lr"])
    speeds = np.asarray(speeds, np.float32)
    num_clients = data.num_clients

    def duration(c: int) -> np.float32:
        if durations is not None:
            return np.float32(durations[c])
        n = int(data.train_counts[c])
        return np.float32(math.ceil(n / batch_size) * local_epochs) * speeds[c]

    def start(time, slot, client, key, model, version):
        job = {"client": client, "key": key, "params": model, "version": version}
        heapq.heappush(events, (np.float32(time + duration(client)), slot, job))

    events: list = []  # (finish time, slot, job); slots are unique, so jobs are never compared
    sample_key, clients_key = jax.random.split(jax.random.fold_in(run_key, 0))
    first = [int(i) for i in jax.random.choice(sample_key, num_clients, (m,), replace=False)]
    keys = jax.random.split(clients_key, m)
    for slot, c in enumerate(first):
        start(np.float32(0), slot, c, keys[slot], params, 0)
    version, buffer, freed, log, downloads = 0, [], [], [], m
    while version < updates:
        clock, slot, job = heapq.heappop(events)
        x, y = data.client_train(job["client"])
        local, _ = client_sgd(apply_fn, job["params"], x, y, job["key"], lr=lr,
                              local_epochs=local_epochs, batch_size=batch_size)
        delta = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
                             local, job["params"])
        buffer.append({"n": len(y), "tau": version - job["version"], "delta": delta,
                       "client": job["client"]})
        if restart == "at_arrival":
            sample_key, client_key = jax.random.split(
                jax.random.fold_in(jax.random.fold_in(run_key, version), len(buffer) - 1))
            busy = {j["client"] for _, _, j in events}
            scores = np.asarray(jax.random.gumbel(sample_key, (num_clients,)))
            new = max((c for c in range(num_clients) if c not in busy), key=lambda c: scores[c])
            downloads += 1
            if len(buffer) < k:
                start(clock, slot, new, client_key, params, version)
            else:
                last = (slot, new, client_key)
        else:
            freed.append(slot)
        if len(buffer) < k:
            continue
        total = sum(b["n"] for b in buffer) or 1  # clients without examples send zero deltas
        coefs = [b["n"] / total / math.sqrt(1 + b["tau"]) for b in buffer]
        mean_delta = _combine(coefs, [b["delta"] for b in buffer], params)
        params = _f32(jax.tree.map(lambda w, d: w + server_lr * d, _f64(params), mean_delta))
        version += 1
        if restart == "at_arrival":
            slot, new, client_key = last
            start(clock, slot, new, client_key, params, version)
        else:
            sample_key, clients_key = jax.random.split(jax.random.fold_in(run_key, version))
            if k == m:
                new = [int(i) for i in jax.random.choice(sample_key, num_clients, (k,),
                                                         replace=False)]
            else:
                busy = {j["client"] for _, _, j in events}
                scores = np.asarray(jax.random.gumbel(sample_key, (num_clients,)))
                new = [int(c) for c in np.argsort(-scores, kind="stable") if int(c) not in busy][:k]
            keys = jax.random.split(clients_key, k)
            for idx, slot in enumerate(freed):
                start(clock, slot, new[idx], keys[idx], params, version)
            downloads += k
        log.append({"clock": float(clock), "staleness": [b["tau"] for b in buffer],
                    "clients": [b["client"] for b in buffer], "downloads": downloads})
        buffer, freed = [], []
    return params, log
