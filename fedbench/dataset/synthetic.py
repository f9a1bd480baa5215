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
PAPER_SIZES = (4.0, 2.0, 50)  # n_k = int(lognormal(4, 2)) + 50


def client_sizes(rng: np.random.Generator, num_clients: int, samples_per_client: int | None,
                 sizes: tuple[float, float, int] | None) -> np.ndarray:
    """``n_k = int(lognormal(mean, sigma)) + offset`` for every client (``sizes``; ``None`` =
    the paper's ``(4, 2, 50)``), or ``samples_per_client`` for all of them."""
    if samples_per_client is not None:
        return np.full(num_clients, int(samples_per_client))
    mean, sigma, offset = PAPER_SIZES if sizes is None else sizes
    return rng.lognormal(mean, sigma, num_clients).astype(int) + int(offset)


def generate_synthetic(
    alpha: float,
    beta: float,
    iid: bool = False,
    num_clients: int | None = None,
    dimension: int | None = None,
    num_classes: int | None = None,
    samples_per_client: int | None = None,
    seed: int = 0,
    sizes: tuple[float, float, int] | None = None,
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
      samples_per_client: fixed ``n_k`` for every client; ``None`` = the lognormal rule.
      seed: seed of the generator (the dataset, not the training run).
      sizes: ``(mean, sigma, offset)`` of ``n_k = int(lognormal(mean, sigma)) + offset``;
        ``None`` = the paper's ``(4, 2, 50)``.

    Returns:
      ``(train_x, train_y, test_x, test_y)``: lists with one array per client.
    """
    num_clients = PAPER_NUM_CLIENTS if num_clients is None else int(num_clients)
    d = PAPER_DIMENSION if dimension is None else int(dimension)
    k = PAPER_NUM_CLASSES if num_classes is None else int(num_classes)
    rng = np.random.default_rng(seed)
    sizes = client_sizes(rng, num_clients, samples_per_client, sizes)
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


def generate_synthetic_vectorised(
    alpha: float,
    beta: float,
    iid: bool = False,
    num_clients: int | None = None,
    dimension: int | None = None,
    num_classes: int | None = None,
    samples_per_client: int | None = None,
    seed: int = 0,
    sizes: tuple[float, float, int] | None = None,
    rows_per_chunk: int = 1 << 16,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The distribution of :func:`generate_synthetic`, drawn for all clients at once.

    Same model (Li et al. 2020, Section 5.1) and the same 90/10 split per client, but each
    random quantity is drawn for every client in one call (in float32) instead of client after
    client, so it is a different sample of the same distribution and 100,000 clients take
    seconds, not minutes. Within a client the examples are i.i.d., so the first
    ``int(0.9 * n_k)`` are its training split (no shuffle needed). Memory beyond the result is
    bounded by ``rows_per_chunk`` rows.

    Returns:
      ``(x, y, client, is_test)``: ``[n, d]`` float32 inputs, ``[n]`` int32 labels, each row's
      client and whether it is in its client's test split; rows grouped by client.
    """
    num_clients = PAPER_NUM_CLIENTS if num_clients is None else int(num_clients)
    d = PAPER_DIMENSION if dimension is None else int(dimension)
    k = PAPER_NUM_CLASSES if num_classes is None else int(num_classes)
    rng = np.random.default_rng(seed)
    n_k = client_sizes(rng, num_clients, samples_per_client, sizes)
    mean_w = rng.normal(0, alpha, num_clients).astype(np.float32)
    big_b = rng.normal(0, beta, num_clients).astype(np.float32)
    scale = np.power(np.arange(1, d + 1, dtype=np.float64), -0.6).astype(np.float32)  # sqrt(Sigma)
    if iid:
        mean_x = np.broadcast_to(big_b[:, None], (num_clients, d))
        w_shared = rng.normal(0, 1, (d, k)).astype(np.float32)
        b_shared = rng.normal(0, 1, k).astype(np.float32)
    else:
        mean_x = (big_b[:, None] + rng.standard_normal((num_clients, d), np.float32))
        w_all = mean_w[:, None, None] + rng.standard_normal((num_clients, d, k), np.float32)
        b_all = mean_w[:, None] + rng.standard_normal((num_clients, k), np.float32)
    client = np.repeat(np.arange(num_clients, dtype=np.int32), n_k)
    total = int(n_k.sum())
    x = np.empty((total, d), np.float32)
    y = np.empty(total, np.int32)
    for start in range(0, total, rows_per_chunk):
        rows = slice(start, min(start + rows_per_chunk, total))
        c = client[rows]
        xc = rng.standard_normal((c.shape[0], d), np.float32)
        xc *= scale
        xc += mean_x[c]
        if iid:
            logits = xc @ w_shared + b_shared
        else:
            logits = np.einsum("nd,ndk->nk", xc, w_all[c]) + b_all[c]
        x[rows], y[rows] = xc, np.argmax(logits, axis=1)
    offsets = np.concatenate([[0], np.cumsum(n_k)[:-1]])
    position = np.arange(total) - np.repeat(offsets, n_k)
    is_test = position >= np.repeat((PAPER_TRAIN_FRACTION * n_k).astype(int), n_k)
    return x, y, client, is_test
