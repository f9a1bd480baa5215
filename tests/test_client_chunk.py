"""Clients processed in groups (``client_chunk``: vmap inside lax.map) against one at a time.

Independent expectation: the same run with ``client_axis=map`` and no groups (the sequential
reference loop is checked against that one in tests/test_reference.py).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import make_uneven_data

from fedbench.algorithm import build_algorithm
from fedbench.model import MLP
from fedbench.simulator import Settings, Simulator


@pytest.mark.parametrize("name", ["fedavg", "scaffold"])
@pytest.mark.parametrize("chunk", [2, 5])  # 5 clients: padded to 6 in groups of 2; one group
def test_groups_of_clients_equal_one_client_at_a_time(name, chunk):
    data = make_uneven_data(sizes=(3, 17, 8, 25, 1, 12, 9), seed=4)

    def run(chunk):
        settings = Settings(clients_per_round=5, local_epochs=2, batch_size=4, lr=0.1,
                            client_axis="map", client_chunk=chunk)
        sim = Simulator(MLP(3, (8,)), build_algorithm({"name": name}, 5), data, settings, seed=0)
        state = sim.run(sim.run(sim.init(), 2), 1)
        assert sim.trace_count == 1  # a second block reuses the program
        return state

    one, grouped = run(None), run(chunk)
    for a, b in zip(jax.tree.leaves((one.params, one.store)),
                    jax.tree.leaves((grouped.params, grouped.store))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(one.participation),
                                  np.asarray(grouped.participation))


def test_client_chunk_auto_is_no_grouping_and_bad_values_name_the_key():
    from conftest import compose

    from fedbench.errors import ConfigError
    from fedbench.run import validate

    assert validate(compose(["client_chunk=auto"])).client_chunk is None
    assert validate(compose(["client_chunk=4"])).client_chunk == 4
    with pytest.raises(ConfigError, match="client_chunk"):
        validate(compose(["client_chunk=0"]))
