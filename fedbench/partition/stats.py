"""Heterogeneity statistics of a partition's training splits (``partition_stats`` in
``summary.json``)."""

from __future__ import annotations

from typing import Any

import numpy as np


def heterogeneity_stats(
    client_labels: list[np.ndarray], num_classes: int
) -> dict[str, Any]:
    """Client sizes, label histograms and the mean total-variation distance to the global mix.

    ``tv_i = 0.5 * sum_k |p_ik - p_k|`` where ``p_i`` is client ``i``'s label distribution and
    ``p`` the distribution of all examples pooled; 0 when a client's mix equals the global one, and
    close to 1 when a client holds only classes that are rare overall.
    """
    hist = np.stack([np.bincount(y, minlength=num_classes) for y in client_labels])
    sizes = hist.sum(axis=1)
    global_p = hist.sum(axis=0) / max(1, hist.sum())
    client_p = hist / np.maximum(sizes, 1)[:, None]
    tv = 0.5 * np.abs(client_p - global_p).sum(axis=1)
    return {
        "client_sizes": sizes.tolist(),
        "label_histograms": hist.tolist(),
        "global_label_distribution": global_p.round(6).tolist(),
        "total_variation": tv.round(6).tolist(),
        "mean_total_variation": float(tv.mean()),
        "size_min": int(sizes.min()),
        "size_max": int(sizes.max()),
        "size_mean": float(sizes.mean()),
    }
