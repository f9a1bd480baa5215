"""Names of the metrics a run reports, in one JAX-free place (``fedbench-collect`` reads them
without loading JAX)."""

from __future__ import annotations

#: Metrics computed from the model's parameters: NaN (null in JSON) at an evaluation whose
#: parameters are not finite (argmax of NaN logits picks one class, which is no accuracy), and
#: blanked by ``fedbench-collect`` in diverged rows.
MODEL_METRICS = (
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "test_cindex",
    "client_accuracy_mean",
    "client_accuracy_p10",
    "client_accuracy_min",
    "client_accuracy_std",
    "client_cindex_mean",
    "client_cindex_p10",
    "client_cindex_min",
    "client_cindex_std",
)
#: The final table a run prints, in this order (``epsilon`` follows when there is one).
METRIC_KEYS = ("round", *MODEL_METRICS[:9], "client_accuracy_p10_skipped", *MODEL_METRICS[9:],
               "bytes_up", "bytes_down", "compression_ratio", "simulated_seconds")
