"""Gradient inversion: inputs (and labels) whose update matches the one observed.

References:
  L. Zhu, Z. Liu, S. Han. "Deep Leakage from Gradients" (DLG), NeurIPS 2019, Algorithm 1: dummy
  inputs ``x'`` and dummy label logits, the label a softmax of them, optimised with L-BFGS to
  minimise ``|| nabla W' - nabla W ||^2`` (eq. 4), summed over all layers.
  B. Zhao, K. R. Mopuri, H. Bilen. "iDLG", 2020: the same objective with the label fixed to the
  one read from the last layer (:mod:`fedbench.audit.labels`).
  J. Geiping, H. Bauermeister, H. Droege, M. Moeller. "Inverting Gradients - How easy is it to
  break privacy in federated learning?", NeurIPS 2020, eq. 4: minimise
  ``1 - <nabla W', nabla W> / (||nabla W'|| ||nabla W||) + alpha_TV TV(x')`` over ``x'`` in the
  data's box, with Adam on the signed gradient and the step size divided by 10 at 3/8, 5/8 and
  7/8 of the iterations (Sec. 4 and their supplementary material).

Every attack runs at most a given number of iterations inside one compiled loop and returns the iterate with the smallest objective seen (L-BFGS can step to a
non-finite point once the objective is at machine precision).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Params = Any
UpdateFn = Callable[[jax.Array, jax.Array], Params]


class Reconstruction(NamedTuple):
    x: jax.Array        # [B, H, W, C] reconstructed inputs
    probs: jax.Array    # [B, K] label probabilities (one-hot where the label was fixed)
    loss: jax.Array     # [] the objective at x
    history: jax.Array  # [steps] the objective at each iteration


def l2_distance(a: Params, b: Params) -> jax.Array:
    """``sum_layers ||a - b||^2`` (Zhu et al. 2019, eq. 4)."""
    return sum(jnp.sum((u - v) ** 2) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def cosine_distance(a: Params, b: Params, eps: float = 1e-12) -> jax.Array:
    """``1 - <a, b> / (||a|| ||b||)`` over all parameters at once (Geiping et al., eq. 4)."""
    pairs = list(zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    dot = sum(jnp.sum(u * v) for u, v in pairs)
    na = jnp.sqrt(sum(jnp.sum(u * u) for u, _ in pairs))
    nb = jnp.sqrt(sum(jnp.sum(v * v) for _, v in pairs))
    return 1.0 - dot / jnp.maximum(na * nb, eps)


def total_variation(x: jax.Array) -> jax.Array:
    """Anisotropic total variation of ``[B, H, W, ...]`` images: the mean absolute difference of
    vertical plus that of horizontal neighbours (Rudin, Osher, Fatemi 1992; Geiping et al.)."""
    dh = jnp.abs(x[:, 1:, :] - x[:, :-1, :])
    dw = jnp.abs(x[:, :, 1:] - x[:, :, :-1])
    return jnp.mean(dh) + jnp.mean(dw)


def _keep_best(best, candidate, value):
    """``(z, v)`` of the smaller finite objective."""
    z, v = best
    take = jnp.isfinite(value) & (value < v)
    return jax.tree.map(lambda c, o: jnp.where(take, c, o), candidate, z), jnp.where(take, value, v)


def dlg(
    update_fn: UpdateFn,
    observed: Params,
    x0: jax.Array,
    logits0: jax.Array,
    steps: int,
    fixed_probs: jax.Array | None = None,
    memory_size: int = 100,
    tol: float = 0.0,
) -> Reconstruction:
    """DLG (``fixed_probs=None``: the label is learned) or iDLG (label given) with L-BFGS.

    Args:
      update_fn: ``(x, probs) -> update`` (:func:`fedbench.audit.targets.update_map`).
      observed: the update the server saw.
      x0: ``[B, ...]`` initial dummy inputs (Zhu et al.: standard normal).
      logits0: ``[B, K]`` initial dummy label logits (standard normal); ignored if
        ``fixed_probs`` is given.
      steps: L-BFGS iterations (each with a zoom line search, optax's default).
      fixed_probs: ``[B, K]`` known label probabilities (iDLG), or ``None``.
      memory_size: L-BFGS history (PyTorch's default, used by Zhu et al., is 100).
      tol: stop once the objective is at or below this (``history`` is NaN after the stop).
    """

    def probs_of(logits):
        return jax.nn.softmax(logits) if fixed_probs is None else fixed_probs

    def objective(z):
        x, logits = z
        return l2_distance(update_fn(x, probs_of(logits)), observed)

    opt = optax.lbfgs(memory_size=memory_size)
    value_and_grad = optax.value_and_grad_from_state(objective)
    z0 = (x0, logits0)

    def step(carry):
        i, z, state, best, history = carry
        value, grad = value_and_grad(z, state=state)
        best = _keep_best(best, z, value)
        updates, state = opt.update(grad, state, z, value=value, grad=grad, value_fn=objective)
        return i + 1, optax.apply_updates(z, updates), state, best, history.at[i].set(value)

    def running(carry):
        i, _, _, (_, best_value), _ = carry
        return (i < steps) & (best_value > tol)

    inf = jnp.asarray(jnp.inf, x0.dtype)
    init = (0, z0, opt.init(z0), (z0, inf), jnp.full((steps,), jnp.nan, x0.dtype))
    _, z, _, best, history = jax.lax.while_loop(running, step, init)
    (x, logits), loss = _keep_best(best, z, objective(z))
    return Reconstruction(x, probs_of(logits), loss, history)


def step_schedule(lr: float, steps: int) -> optax.Schedule:
    """``lr``, divided by 10 at 3/8, 5/8 and 7/8 of ``steps`` (Geiping et al.'s schedule)."""
    bounds = {int(steps * f): 0.1 for f in (3 / 8, 5 / 8, 7 / 8)}
    return optax.piecewise_constant_schedule(lr, bounds)


def cosine_attack(
    update_fn: UpdateFn,
    observed: Params,
    x0: jax.Array,
    probs: jax.Array,
    steps: int,
    lr: float = 0.1,
    tv_weight: float = 1e-2,
    box: tuple[float, float] = (0.0, 1.0),
) -> Reconstruction:
    """Geiping et al.'s attack: cosine distance plus ``tv_weight`` times total variation,
    minimised by Adam on the signed gradient, the iterate projected into ``box`` after each step.

    Labels ``probs`` are given (from :func:`fedbench.audit.labels.batch_labels`, as in the paper,
    which recovers them as iDLG does).
    """
    lo, hi = box

    def objective(x):
        return cosine_distance(update_fn(x, probs), observed) + tv_weight * total_variation(x)

    opt = optax.adam(step_schedule(lr, steps))

    def step(carry, _):
        x, state, best = carry
        value, grad = jax.value_and_grad(objective)(x)
        best = _keep_best(best, x, value)
        updates, state = opt.update(jnp.sign(grad), state, x)
        x = jnp.clip(optax.apply_updates(x, updates), lo, hi)
        return (x, state, best), value

    x0 = jnp.clip(x0, lo, hi)
    init = (x0, opt.init(x0), (x0, jnp.asarray(jnp.inf, x0.dtype)))
    (x, _, best), history = jax.lax.scan(step, init, None, length=steps)
    x, loss = _keep_best(best, x, objective(x))
    return Reconstruction(x, probs, loss, history)
