"""``bytes_down`` counts every download of the server model (issue "Results you can trust",
item 8): a dropped straggler downloaded the model before it fell behind, and a FedBuff client
still training downloaded the model it trains on.

Independent expectation: the logistic-regression model on breast_cancer (30 features, 2
classes) is ``(30 + 1) * 2`` float32 numbers, 248 bytes, and the counts of clients started
follow from the settings alone.
"""

from __future__ import annotations

from conftest import compose

from fedbench.run import run_experiment

MODEL_BYTES = (30 + 1) * 2 * 4
SMALL = ["dataset=breast_cancer", "partition=iid", "model=logreg", "num_clients=6",
         "clients_per_round=4", "rounds=3", "eval_every=3", "batch_size=32"]


def test_dropped_stragglers_downloaded_the_model(tmp_path):
    cfg = compose(SMALL + ["stragglers.fraction=0.5", "stragglers.policy=drop"])
    final = run_experiment(cfg, tmp_path, progress=None)["final"]
    assert final["bytes_down"] == 3 * 4 * MODEL_BYTES  # every sampled client, every round
    assert final["bytes_up"] == 3 * 2 * MODEL_BYTES  # half of them never report


def test_fedbuff_clients_in_flight_downloaded_the_model(tmp_path):
    cfg = compose(SMALL + ["algorithm=fedbuff", "algorithm.buffer_size=2",
                           "algorithm.concurrency=4", "site_speed=0.5"])
    final = run_experiment(cfg, tmp_path, progress=None)["final"]
    assert final["bytes_up"] == 3 * 2 * MODEL_BYTES  # 3 server updates of 2 arrivals
    assert final["bytes_down"] == (4 + 3 * 2) * MODEL_BYTES  # 4 at time 0, one per arrival
