"""Who masks with whom: the complete graph (SecAgg) or a ``k``-regular graph (SecAgg+).

Bonawitz et al. (CCS 2017) mask every pair of the cohort: the complete graph, degree ``n - 1``.
Bell et al. (CCS 2020, Sec. 3-4) mask and share only along the edges of a sparse random
communication graph of degree ``k = O(log n)``, which brings a client's cost to
``O(log n + m)`` and the server's to ``O(n log n + n m)``.

:func:`harary` is the Harary graph ``H(k, n)`` (the ``k``-regular, ``k``-connected circulant:
each node joined to its ``k // 2`` nearest nodes on each side of a ring, and for odd ``k`` to
the opposite node) with the nodes relabelled by a seeded random permutation. It is exactly
``k``-regular, so every client's cost is the same closed form (:mod:`fedbench.secagg.costs`);
it is **not** Bell et al.'s random graph, whose analysis (a graph that stays connected and keeps
every neighbourhood's honest majority under random dropouts with high probability) is not
claimed for it. The simulator uses it for costs and for correctness of the modular sum, which
hold for any graph.
"""

from __future__ import annotations

import numpy as np


def complete(n: int) -> tuple[frozenset[int], ...]:
    """Each of ``n`` clients' neighbours in the complete graph (SecAgg)."""
    return tuple(frozenset(set(range(n)) - {u}) for u in range(n))


def harary(n: int, k: int, seed: int) -> tuple[frozenset[int], ...]:
    """Each of ``n`` clients' ``k`` neighbours in the Harary graph ``H(k, n)`` under a random
    relabelling drawn from ``seed`` (module docstring).

    Raises:
      ValueError: ``k`` outside ``[1, n - 1]``, or ``k`` and ``n`` both odd (no ``k``-regular
        graph on ``n`` nodes exists: the degrees would sum to an odd number).
    """
    if not 1 <= k <= n - 1:
        raise ValueError(f"degree k={k} outside [1, n - 1 = {n - 1}]")
    if k % 2 and n % 2:
        raise ValueError(f"no {k}-regular graph on {n} nodes (k and n both odd)")
    order = np.random.default_rng([seed, 0x5EC, n, k]).permutation(n)
    neighbours: list[set[int]] = [set() for _ in range(n)]
    for i in range(n):
        ring = [(i + d) % n for d in range(1, k // 2 + 1)]
        if k % 2:
            ring.append((i + n // 2) % n)
        for j in ring:
            u, v = int(order[i]), int(order[j])
            neighbours[u].add(v)
            neighbours[v].add(u)
    return tuple(frozenset(s) for s in neighbours)
