"""Shadow models for LiRA: the same architecture trained on random halves of a population.

Carlini et al. (S&P 2022), Sec. VI-B: each shadow model trains on a random subset containing each
example with probability 1/2, so every example has about ``S / 2`` OUT models. Here the shadows
are trained centrally (minibatch SGD, the federation's model, learning rate and batch size, for
as many passes over their data as a federated example gets: ``rounds * clients_per_round /
num_clients * local_epochs``), all ``S`` at once under ``vmap``; they approximate the
federation's training, which the offline attack only uses through the OUT distribution of each
example's confidence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

Params = Any


def shadow_masks(key: jax.Array, num_shadows: int, population: int) -> jax.Array:
    """``[S, N]`` bool: each example in the training sets of a random ``S // 2`` of the shadows
    (probability 1/2 for each shadow, and exactly ``S - S // 2`` OUT models per example, as in
    Carlini et al.'s released code)."""
    ranks = jnp.argsort(jnp.argsort(jax.random.uniform(key, (num_shadows, population)), axis=0),
                        axis=0)
    return ranks < num_shadows // 2


def train_shadows(
    init_fn: Callable[[jax.Array], Params],
    apply_fn: Callable[[Params, jax.Array], jax.Array],
    x: jax.Array,
    y: jax.Array,
    masks: jax.Array,
    key: jax.Array,
    lr: float,
    batch_size: int,
    steps: int,
) -> Params:
    """``S`` models, model ``s`` trained by ``steps`` SGD steps on minibatches drawn uniformly
    (with replacement) from the examples where ``masks[s]`` is true; parameters stacked ``[S]``."""
    opt = optax.sgd(lr)

    def loss(params, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(apply_fn(params, xb), yb).mean()

    def train_one(mask, k):
        init_key, data_key = jax.random.split(k)
        params = init_fn(init_key)
        probs = mask / mask.sum()

        def step(carry, step_key):
            params, state = carry
            idx = jax.random.choice(step_key, x.shape[0], (batch_size,), p=probs)
            grads = jax.grad(loss)(params, x[idx], y[idx])
            updates, state = opt.update(grads, state)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(step, (params, opt.init(params)),
                                      jax.random.split(data_key, steps))
        return params

    keys = jax.random.split(key, masks.shape[0])
    return jax.jit(jax.vmap(train_one))(masks.astype(jnp.float32), keys)
