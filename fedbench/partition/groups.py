"""Feature- and concept-skew scenarios with known client groups, for clustered FL.

The examples are split over the clients uniformly at random (as ``partition=iid``, with the same
draws), then the clients are cut into groups, in client order (clients ``0 .. s_0 - 1`` form
group 0, the next ``s_1`` group 1, ...), and every client's training *and* test examples are
transformed by its group's rule, before normalisation (training statistics only):

==============  ==============================================  ================================
scenario        group ``g``'s examples                          groups
==============  ==============================================  ================================
``rotated``     images rotated by ``angles[g]`` degrees          ``len(angles)`` (default 0, 90,
                counter-clockwise (``np.rot90`` over height      180, 270: four groups)
                and width); labels kept
``label_swap``  labels passed through group ``g``'s permutation  ``groups`` (default 4)
                ``pi_g`` of the classes; inputs kept
                (``shift``: ``pi_g(y) = (y + g) mod K``;
                ``random``: a seeded permutation, ``pi_0`` the
                identity)
==============  ==============================================  ================================

The same input means different things in different groups, so no single model fits all of them;
the group of each client is the data's ``client_groups``, against which clustered algorithms'
clusters are scored (``cluster_ari``, :meth:`fedbench.evaluation.Evaluator.cluster_metrics`).
``group_sizes`` fixes the number of clients in each group (default: as equal as possible, the
first groups one larger).

References:
  A. Ghosh, J. Chung, D. Yin, K. Ramchandran. "An Efficient Framework for Clustered Federated
  Learning", NeurIPS 2020 (IFCA; rotated MNIST and CIFAR: client groups whose images are rotated
  by 0, 90, 180 and 270 degrees, Sec. 5.2).
  F. Sattler, K.-R. Mueller, W. Samek. "Clustered Federated Learning: Model-Agnostic Distributed
  Multitask Optimization Under Privacy Constraints", IEEE TNNLS 32(8), 2021 (CFL; client
  groups whose labels are swapped, so that their conditional distributions disagree, Sec. VI).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedbench.errors import ConfigError

SCENARIOS = ("rotated", "label_swap")
PERMUTATIONS = ("shift", "random")
_KEYS = {"rotated": ("angles",), "label_swap": ("groups", "permutation")}
_COMMON = ("name", "group_sizes", "seed", "feature_shift")


def group_sizes(cfg: Mapping[str, Any], num_clients: int) -> np.ndarray:
    """Clients per group: ``group_sizes`` as given, or ``num_clients`` split as evenly as
    possible over the scenario's groups.

    Raises:
      ConfigError: an unknown key, bad angles, groups or permutation, or ``group_sizes`` that
        are not positive integers summing to ``num_clients``.
    """
    name = cfg["name"]
    unknown = sorted(set(cfg) - set(_KEYS[name]) - set(_COMMON))
    if unknown:
        raise ConfigError(f"partition.{unknown[0]}", cfg[unknown[0]],
                          f"no such key of partition={name} (keys: "
                          + ", ".join((*_KEYS[name], "group_sizes", "seed")) + ")")
    if name == "rotated":
        angles = cfg.get("angles", [0, 90, 180, 270])
        if (not isinstance(angles, Sequence) or isinstance(angles, str) or not angles
                or any(isinstance(a, bool) or not isinstance(a, int) or a % 90 for a in angles)):
            raise ConfigError("partition.angles", angles,
                              "a non-empty list of multiples of 90 (degrees), e.g. [0, 90, 180, 270]")
        groups = len(angles)
    else:
        groups = cfg.get("groups", 4)
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ConfigError("partition.groups", groups, "an integer >= 1")
        if cfg.get("permutation", "shift") not in PERMUTATIONS:
            raise ConfigError("partition.permutation", cfg.get("permutation"),
                              "one of: " + ", ".join(PERMUTATIONS))
    sizes = cfg.get("group_sizes")
    if sizes is None:
        if groups > num_clients:
            raise ConfigError("num_clients", num_clients,
                              f">= {groups}, the number of groups of partition={name}")
        return np.array([len(p) for p in np.array_split(np.arange(num_clients), groups)])
    if (not isinstance(sizes, Sequence) or len(sizes) != groups
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes)
            or sum(sizes) != num_clients):
        raise ConfigError("partition.group_sizes", sizes,
                          f"{groups} integers >= 1 (one per group) summing to "
                          f"num_clients={num_clients}, or null (as equal as possible)")
    return np.asarray(sizes)


def label_permutations(cfg: Mapping[str, Any], num_classes: int, seed: int) -> np.ndarray:
    """``[groups, K]``: row ``g`` maps a label ``y`` of group ``g`` to ``pi_g(y)``.

    ``shift``: ``(y + g) mod K``. ``random``: row 0 the identity, every other row a permutation
    from ``default_rng([seed, 4])``, redrawn until it differs from the rows before it.

    Raises:
      ConfigError: more groups than distinct permutations of this kind (``shift``: ``K``).
    """
    groups = int(cfg.get("groups", 4))
    kind = cfg.get("permutation", "shift")
    limit = num_classes if kind == "shift" else int(np.prod(np.arange(1, min(num_classes, 8) + 1)))
    if groups > limit:
        raise ConfigError("partition.groups", groups,
                          f"<= {limit}: the distinct '{kind}' permutations of {num_classes} classes")
    if kind == "shift":
        return (np.arange(num_classes)[None] + np.arange(groups)[:, None]) % num_classes
    rng = np.random.default_rng([seed, 4])
    rows = [np.arange(num_classes)]
    while len(rows) < groups:
        p = rng.permutation(num_classes)
        if not any(np.array_equal(p, r) for r in rows):
            rows.append(p)
    return np.stack(rows)


def rotate(x: np.ndarray, angle: int) -> np.ndarray:
    """``[n, H, W, C]`` images rotated by ``angle`` degrees counter-clockwise."""
    return np.rot90(x, k=(angle // 90) % 4, axes=(1, 2)).copy()


def apply_groups(
    cfg: Mapping[str, Any],
    train_x: list[np.ndarray],
    test_x: list[np.ndarray],
    train_y: list[np.ndarray],
    test_y: list[np.ndarray],
    num_classes: int,
    task: str,
    seed: int,
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray], dict[str, Any]]:
    """Client ``c``'s inputs and labels (train and test alike) under its group's rule.

    Returns:
      ``(train_x, test_x, train_y, test_y, info)``; ``info``: ``client_groups`` (each
      client's group) and ``angles`` (rotated) or ``label_permutations`` (label_swap).

    Raises:
      ConfigError: see :func:`group_sizes`; ``rotated`` on inputs that are not ``[H, W, C]``
        images (square where an angle is 90 or 270), ``label_swap`` on a task other than
        classification.
    """
    name = cfg["name"]
    sizes = group_sizes(cfg, len(train_x))
    groups = np.repeat(np.arange(len(sizes)), sizes)
    info: dict[str, Any] = {"client_groups": groups.tolist(), "group_sizes": sizes.tolist()}
    if name == "rotated":
        angles = list(cfg.get("angles", [0, 90, 180, 270]))
        shape = train_x[0].shape[1:]
        quarter = any(a % 180 for a in angles)
        if len(shape) != 3 or (quarter and shape[0] != shape[1]):
            raise ConfigError("partition.name", name,
                              f"a dataset of [H, W, C] images{' with H = W' if quarter else ''} "
                              f"(this one's inputs are {list(shape)}), e.g. digits or mnist5k")
        info["angles"] = angles
        return ([rotate(x, angles[g]) for x, g in zip(train_x, groups)],
                [rotate(x, angles[g]) for x, g in zip(test_x, groups)], train_y, test_y, info)
    if task != "classification":
        raise ConfigError("partition.name", name, f"a classification dataset (this one: {task})")
    perms = label_permutations(cfg, num_classes, seed)
    info["label_permutations"] = perms.tolist()
    return (train_x, test_x, [perms[g][y] for y, g in zip(train_y, groups)],
            [perms[g][y] for y, g in zip(test_y, groups)], info)
