"""Synthetic(alpha, beta) federated data of Li et al. 2020 (FedProx).

References:
  T. Li, A. K. Sahu, M. Zaheer, M. Sanjabi, A. Talwalkar, V. Smith. "Federated Optimization in
  Heterogeneous Networks", MLSys 2020, Section 5.1 and Appendix C.1 (the generator follows the
  paper's released data scripts, ``data/synthetic_*/generate_*.py``), itself after Shamir et al.
  2014.
"""

from __future__ import annotations

import numpy as np

PAPER_NUM_CLIENTS = 30
PAPER_DIMENSION = 60
PAPER_NUM_CLASSES = 10
PAPER_TRAIN_FRACTION = 0.9


def generate_synthetic(
    alpha: float,
    beta: float,
    iid: bool = False,
    num_clients: int | None = None,
    dimension: int | None = None,
    num_classes: int | None = None,
    samples_per_client: int | None = None,
    seed: int = 0,
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Draws the per-client data of Synthetic(alpha, beta) or Synthetic-IID.

    For client ``k`` (Li et al. 2020, Section 5.1): ``n_k = int(lognormal(4, 2)) + 50``;
    ``u_k ~ N(0, alpha)`` is the mean of both ``W_k ~ N(u_k, 1)`` (``d x classes``) and
    ``b_k ~ N(u_k, 1)``; ``B_k ~ N(0, beta)`` and ``v_k ~ N(B_k, 1)`` (``d``-vector);
    ``x ~ N(v_k, Sigma)`` with ``Sigma = diag(j^-1.2)``; ``y = argmax(softmax(W_k^T x + b_k))``.
    Standard deviations are the second argument, as in NumPy and the paper's scripts. In the IID
    variant every client shares one ``W, b ~ N(0, 1)`` and ``v_k = B_k * 1`` (zero for beta=0).
    Each client's examples are shuffled and split 90/10 into train/test
    (``train = int(0.9 * n_k)``), as in the paper's scripts.

    Args:
      alpha: how much the local models differ (std of ``u_k``); 0 in Synthetic(0, 0).
      beta: how much the local input distributions differ (std of ``B_k``).
      iid: the Synthetic-IID variant (shared model; paper uses alpha = beta = 0).
      num_clients: number of clients; ``None`` = 30, as in the paper.
      dimension: input dimension ``d``; ``None`` = 60.
      num_classes: number of classes; ``None`` = 10.
      samples_per_client: fixed ``n_k`` for every client; ``None`` = the paper's lognormal rule.
      seed: seed of the generator (the dataset, not the training run).

    Returns:
      ``(train_x, train_y, test_x, test_y)``: lists with one array per client.
    """
    num_clients = PAPER_NUM_CLIENTS if num_clients is None else int(num_clients)
    d = PAPER_DIMENSION if dimension is None else int(dimension)
    k = PAPER_NUM_CLASSES if num_classes is None else int(num_classes)
    rng = np.random.default_rng(seed)
    if samples_per_client is None:
        sizes = rng.lognormal(4, 2, num_clients).astype(int) + 50
    else:
        sizes = np.full(num_clients, int(samples_per_client))
    mean_w = rng.normal(0, alpha, num_clients)  # u_k, shared by W_k and b_k
    big_b = rng.normal(0, beta, num_clients)
    cov_diag = np.power(np.arange(1, d + 1, dtype=np.float64), -1.2)
    if iid:
        mean_x = np.ones((num_clients, d)) * big_b[:, None]
        w_global = rng.normal(0, 1, (d, k))
        b_global = rng.normal(0, 1, k)
    else:
        mean_x = rng.normal(big_b[:, None], 1, (num_clients, d))
    train_x, train_y, test_x, test_y = [], [], [], []
    for c in range(num_clients):
        if iid:
            w, b = w_global, b_global
        else:
            w = rng.normal(mean_w[c], 1, (d, k))
            b = rng.normal(mean_w[c], 1, k)
        # Diagonal covariance: x = v_k + sqrt(Sigma) * z.
        x = mean_x[c] + rng.standard_normal((sizes[c], d)) * np.sqrt(cov_diag)
        # argmax(softmax(z)) == argmax(z): softmax is monotone.
        y = np.argmax(x @ w + b, axis=1)
        order = rng.permutation(sizes[c])
        x, y = x[order], y[order]
        n_train = int(PAPER_TRAIN_FRACTION * sizes[c])
        train_x.append(x[:n_train].astype(np.float32))
        train_y.append(y[:n_train].astype(np.int32))
        test_x.append(x[n_train:].astype(np.float32))
        test_y.append(y[n_train:].astype(np.int32))
    return train_x, train_y, test_x, test_y
