"""What a DP run releases beyond the model, and the noise salt that keeps runs' noise apart.

:data:`PRIVATE_METRICS` and :data:`PRIVATE_SUMMARY` are the outputs computed from the clients'
data outside the DP mechanism (epsilon does not cover them; ``privacy.release_metrics=false``
leaves them out); :func:`noise_salt` derives each run's noise from its whole config.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

#: ``metrics.jsonl`` entries computed from the clients' data outside the DP mechanism, and what
#: they reveal; ``privacy.release_metrics=false`` leaves them out (also of ``summary.json``'s
#: ``final`` and of tracking).
PRIVATE_METRICS = {
    "train_loss": "the model's loss on every client's training data",
    "train_accuracy": "the model's accuracy on every client's training data",
    "client_accuracy_mean": "the clients' own test splits, client by client",
    "client_accuracy_p10": "the clients' own test splits, client by client",
    "client_accuracy_min": "the clients' own test splits, client by client (the worst one)",
    "client_accuracy_std": "the clients' own test splits, client by client",
    "client_accuracy_p10_skipped": "how many clients have fewer than 10 test examples",
    "client_cindex_mean": "the clients' own test splits, client by client",
    "client_cindex_p10": "the clients' own test splits, client by client",
    "client_cindex_min": "the clients' own test splits, client by client (the worst one)",
    "client_cindex_std": "the clients' own test splits, client by client",
    "clusters": "each client's cluster, chosen from its training data or its updates",
    "cluster_ari": "each client's cluster, chosen from its training data or its updates",
    "bytes_up": "participations so far: the exact size of every Poisson cohort",
    "bytes_down": "participations so far: the exact size of every Poisson cohort",
    "simulated_time": "the sampled clients' numbers of local steps (their training sizes)",
    "simulated_seconds": "the sampled clients' numbers of local steps (their training sizes)",
    "compression_ratio": "participations so far: the exact size of every Poisson cohort",
}
#: ``summary.json`` blocks computed from the clients' data (``null`` without release_metrics).
PRIVATE_SUMMARY = {
    "partition_stats": "every client's training size and label histogram",
    "sites": "each site's metric on its own test split, and its train and test sizes",
}
#: Metrics on the pooled test set (the union of the clients' test splits, never trained on):
#: kept with ``release_metrics=false``, but not covered by epsilon either.
TEST_METRICS = ("test_loss", "test_accuracy", "test_cindex")
#: Config keys that cannot change the trained model, left out of :func:`noise_salt`: ``seed``
#: (it enters through the run key), ``seeds`` (replica ``s`` is the run ``seed=s``, tested),
#: ``eval_every`` (results do not depend on how rounds are cut into blocks), how the program
#: is laid out (``replica_axis``, ``replica_memory_mb``, ``devices``, ``client_chunk``,
#: ``client_storage``, ``distributed``; ``cpu_fusions``, XLA:CPU's matrix library, changes float
#: rounding only and keeps the noise a run drew before it existed), the
#: checkpoint settings, tracking and sweep bookkeeping (``sweep``: an in-program sweep's replica is hashed
#: with its own values set and ``sweep`` as in a plain run), and the two reporting switches below.
NOISE_SALT_IGNORED = ("seed", "seeds", "sweep", "replica_axis", "replica_memory_mb", "devices",
                      "client_chunk", "client_storage", "cpu_fusions", "distributed", "eval_every",
                      "sweep_name", "tracking", "hydra", "resume",
                      "checkpoint_every")  # a resumed run draws the same noise
#: Keys left out of :func:`noise_salt` while null (their default): a run that does not use them
#: keeps the noise it drew before they existed.
NOISE_SALT_IGNORED_IF_NULL = ("members",)
#: ``dataset.`` keys likewise left out while null (Synthetic's size and generator options).
NOISE_SALT_IGNORED_DATASET_IF_NULL = ("size_mean", "size_sigma", "size_offset", "generator")
NOISE_SALT_IGNORED_PRIVACY = ("shared_noise", "release_metrics")


def noise_salt(cfg: Mapping[str, Any]) -> int:
    """A 32-bit integer from the SHA-256 of the resolved config's canonical JSON.

    Folded into every DP noise key (client-level noise and DP-SGD's per-step noise, never the
    sampling keys): runs that differ in any setting draw independent noise, an identical config
    the same. Left out: :data:`NOISE_SALT_IGNORED` and ``privacy.``
    :data:`NOISE_SALT_IGNORED_PRIVACY`; ``partition.seed`` is taken as the partition seed used
    (``partition.seed``, else ``seed``), so a ``seeds=S`` job's replica and the single run with
    its config get the same salt.
    """
    config = {k: v for k, v in cfg.items() if k not in NOISE_SALT_IGNORED
              and not (k in NOISE_SALT_IGNORED_IF_NULL and v is None)}
    partition = dict(cfg.get("partition") or {})
    if partition.get("seed") is None:
        partition["seed"] = cfg.get("seed")
    config["partition"] = partition
    if isinstance(cfg.get("dataset"), Mapping):
        config["dataset"] = {k: v for k, v in cfg["dataset"].items()
                             if not (k in NOISE_SALT_IGNORED_DATASET_IF_NULL and v is None)}
    privacy = cfg.get("privacy") or {}
    config["privacy"] = {k: v for k, v in privacy.items() if k not in NOISE_SALT_IGNORED_PRIVACY}
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")
