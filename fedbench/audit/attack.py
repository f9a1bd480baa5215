"""One gradient-inversion trial, end to end: observe, defend, recover labels, invert.

:func:`invert` is pure and jit-able, so trials over seeds run as one compiled ``lax.map``
(:func:`run_trials`). Each trial: the client's update at ``params`` on its batch
(:mod:`fedbench.audit.targets`), a defence applied to it (:mod:`fedbench.audit.defences`), the
labels read from the last layer (iDLG, :mod:`fedbench.audit.labels`; DLG learns them instead),
then the attack (:mod:`fedbench.audit.inversion`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedbench.audit import defences, inversion, labels, targets

Params = Any
ATTACKS = ("dlg", "idlg", "cosine")
TARGETS = ("gradient", "delta")


@dataclasses.dataclass(frozen=True)
class InversionSetting:
    """What the attacker observes and how it attacks (``conf/audit/default.yaml``).

    Attributes:
      attack: ``dlg`` (L-BFGS, labels learned), ``idlg`` (L-BFGS, labels from the last layer) or
        ``cosine`` (Geiping et al.: cosine + TV, Adam, labels from the last layer).
      target: ``gradient`` (one step, FedSGD) or ``delta`` (FedAvg's ``w_E - w_0``).
      local_steps: local SGD steps in a delta; ``lr``: their step size; ``local_batch``: their
        minibatch size (``None``: the whole batch).
      iterations: attack iterations; ``tol``: L-BFGS stops at an objective this small.
      attack_lr, tv_weight: the cosine attack's Adam step and total-variation weight.
      defence, strength: :func:`fedbench.audit.defences.build_defence`.
    """

    attack: str = "idlg"
    target: str = "gradient"
    local_steps: int = 1
    lr: float = 0.1
    local_batch: int | None = None
    iterations: int = 300
    tol: float = 0.0
    attack_lr: float = 0.1
    tv_weight: float = 1e-2
    defence: str = "none"
    strength: float = 0.0


def observe(apply_fn: Callable, params: Params, x: jax.Array, y: jax.Array, key: jax.Array,
            setting: InversionSetting, num_classes: int,
            defend: defences.Defence | None = None) -> tuple[Callable, Params]:
    """``(update_fn, observed)``: the map the attacker inverts and the defended update it saw
    (``defend``: instead of the setting's defence)."""
    update_fn = targets.update_map(apply_fn, params, setting.target, setting.lr,
                                   setting.local_steps, setting.local_batch)
    clean = update_fn(x, jax.nn.one_hot(y, num_classes))
    if defend is None:
        defend = defences.build_defence(setting.defence, setting.strength)
    return update_fn, defend(clean, key)


def invert(apply_fn: Callable, params: Params, x: jax.Array, y: jax.Array, key: jax.Array,
           setting: InversionSetting, num_classes: int,
           box: tuple[float, float] = (0.0, 1.0),
           defend: defences.Defence | None = None) -> dict[str, jax.Array]:
    """One trial on the batch ``(x [B, ...], y [B])``.

    Returns ``x`` (reconstruction), ``labels`` (recovered: iDLG's, or the argmax of DLG's learned
    label), ``loss`` (final objective) and ``history``.
    """
    defence_key, init_key, label_key = jax.random.split(key, 3)
    update_fn, observed = observe(apply_fn, params, x, y, defence_key, setting, num_classes,
                                  defend)
    sign = -1.0 if setting.target == "delta" else 1.0
    read = labels.batch_labels(observed, num_classes, x.shape[0], sign)
    x0 = jax.random.normal(init_key, x.shape, x.dtype)
    if setting.attack == "cosine":
        x0 = box[0] + (box[1] - box[0]) * jax.random.uniform(init_key, x.shape, x.dtype)
        rec = inversion.cosine_attack(update_fn, observed, x0, jax.nn.one_hot(read, num_classes),
                                      setting.iterations, setting.attack_lr, setting.tv_weight,
                                      box)
    elif setting.attack in ("dlg", "idlg"):
        fixed = jax.nn.one_hot(read, num_classes) if setting.attack == "idlg" else None
        logits0 = jax.random.normal(label_key, (x.shape[0], num_classes), x.dtype)
        rec = inversion.dlg(update_fn, observed, x0, logits0, setting.iterations, fixed,
                            tol=setting.tol)
    else:
        raise ValueError(f"unknown attack {setting.attack!r}: one of {', '.join(ATTACKS)}")
    found = jnp.argmax(rec.probs, axis=-1) if setting.attack == "dlg" else read
    return {"x": rec.x, "labels": found, "loss": rec.loss, "history": rec.history}


def run_trials(apply_fn: Callable, init_fn: Callable[[jax.Array], Params], images: jax.Array,
               targets_y: jax.Array, seeds: jax.Array, batch: int, setting: InversionSetting,
               num_classes: int, box: tuple[float, float] = (0.0, 1.0),
               defence_grid: tuple[tuple[str, float], ...] | None = None) -> dict[str, jax.Array]:
    """Independent trials, one per seed, as one compiled ``lax.map``: each draws the model
    (``init_fn(key)``; return fixed parameters to attack one model) and ``batch`` examples
    without replacement from ``images``/``targets_y``, then runs :func:`invert`.

    ``defence_grid``: ``((name, strength) or a defence function, ...)`` run in the same compiled program (a
    ``lax.switch``; the attack is compiled once), each on ``seeds`` or, if ``seeds`` is a list,
    on its own entry of it; the result is then a list with one output per grid entry.
    ``None``: the setting's own defence.

    Returns the stacked outputs of :func:`invert` plus ``original`` and ``true_labels``.
    """
    grid = defence_grid or ((setting.defence, setting.strength),)
    branches = [g if callable(g) else defences.build_defence(*g) for g in grid]

    def trial(pair):
        seed, which = pair[0], pair[1]
        model_key, data_key, attack_key = jax.random.split(jax.random.PRNGKey(seed), 3)
        idx = jax.random.choice(data_key, images.shape[0], (batch,), replace=False)
        x, y = images[idx], targets_y[idx]

        def defend(update, key):
            return jax.lax.switch(which, branches, update, key)

        out = invert(apply_fn, init_fn(model_key), x, y, attack_key, setting, num_classes, box,
                     defend if len(branches) > 1 else branches[0])
        return {**out, "original": x, "true_labels": y}

    if defence_grid is None:
        per_entry = [jnp.asarray(seeds)]
    elif isinstance(seeds, (list, tuple)):
        per_entry = [jnp.asarray(s) for s in seeds]
    else:
        per_entry = [jnp.asarray(seeds)] * len(grid)
    pairs = jnp.concatenate([jnp.stack([s, jnp.full_like(s, i)], -1)
                             for i, s in enumerate(per_entry)])
    out = jax.jit(lambda p: jax.lax.map(trial, p))(pairs)
    if defence_grid is None:
        return out
    bounds = np.cumsum([0] + [len(s) for s in per_entry])
    return [jax.tree.map(lambda a, lo=lo, hi=hi: a[lo:hi], out)
            for lo, hi in zip(bounds[:-1], bounds[1:])]
