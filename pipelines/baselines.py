"""Baselines that evaluate ranks on the same split as the model: most popular, item-kNN and EASE.

All three read the binary user x item matrix of the training and validation
interactions, whose row and column 0 are padding as everywhere in shoprec.
They rank the whole catalog for each test user, excluding the items the user
has seen. Item-kNN and EASE are item-to-item models: a user's scores are the sum of
the weight rows of the items in the user's history.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.sparse as sparse
import torch

from pipelines.errors import ConfigError
from pipelines.metrics import EXCLUDED, mask_seen
from pipelines.scoring import popularity_top_k

log = logging.getLogger(__name__)

BASELINES = ("popularity", "item_knn", "ease")


def interaction_matrix(indptr: np.ndarray, indices: np.ndarray, n_items: int) -> sparse.csr_matrix:
    """Binary (users + 1) x (items + 1) matrix from the seen-item CSR arrays of `user_state`."""
    data = np.ones(len(indices), dtype=np.float64)
    matrix = sparse.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, n_items + 1))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def item_counts(matrix: sparse.csr_matrix) -> np.ndarray:
    """Number of users who interacted with each item (index 0 is padding and counts 0)."""
    return np.asarray(matrix.sum(axis=0)).ravel()


def item_knn_weights(matrix: sparse.csr_matrix, neighbours: int) -> np.ndarray:
    """Cosine similarity between item columns, keeping the `neighbours` most similar items of each item.

    Column j contains the similarities of j's neighbours, so a user's score for j
    sums the similarities of the items in the user's history that are among
    j's neighbours. The diagonal is zero.
    """
    gram = (matrix.T @ matrix).toarray()
    norms = np.sqrt(np.diag(gram))
    similarity = gram / np.maximum(np.outer(norms, norms), 1e-12)
    np.fill_diagonal(similarity, 0.0)
    if neighbours < similarity.shape[0]:
        weakest = np.argpartition(-similarity, neighbours, axis=0)[neighbours:]
        np.put_along_axis(similarity, weakest, 0.0, axis=0)
    return similarity


def ease_weights(matrix: sparse.csr_matrix, l2: float) -> np.ndarray:
    """EASE item-item weights in closed form: B = I - P diag(1 / diag(P)) with P = (X'X + l2 I)^-1.

    The constraint diag(B) = 0 keeps an item from recommending itself
    (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019).
    """
    gram = (matrix.T @ matrix).toarray()
    gram[np.diag_indices_from(gram)] += l2
    precision = np.linalg.inv(gram)
    weights = -precision / np.diag(precision)
    np.fill_diagonal(weights, 0.0)
    return weights


def item_item_top_k(weights: np.ndarray, matrix: sparse.csr_matrix, users: np.ndarray,
                    state: dict[str, np.ndarray], k: int, batch_size: int = 1024) -> np.ndarray:
    """Top-K item indices per user from item-item weights, excluding items the user has seen."""
    top_items = []
    for start in range(0, len(users), batch_size):
        batch = users[start:start + batch_size]
        scores = torch.from_numpy(np.asarray(matrix[batch] @ weights))
        scores[:, 0] = EXCLUDED
        mask_seen(scores, batch, state["seen_indptr"], state["seen_indices"])
        top_items.append(torch.topk(scores, k, dim=1).indices.numpy())
    return np.concatenate(top_items) if top_items else np.zeros((0, k), dtype=np.int64)


def baseline_params(params: dict[str, Any]) -> dict[str, Any]:
    """Validate `evaluate.baselines` and fill in defaults."""
    values = {"knn_neighbours": 50, "ease_l2": 500.0, "max_items": 20000, **(params or {})}
    for key in ("knn_neighbours", "max_items"):
        if not isinstance(values[key], int) or isinstance(values[key], bool) or values[key] < 1:
            raise ConfigError(f"params.yaml: evaluate.baselines.{key} is {values[key]!r}, expected a positive integer")
    if not isinstance(values["ease_l2"], (int, float)) or isinstance(values["ease_l2"], bool) or values["ease_l2"] <= 0:
        raise ConfigError(f"params.yaml: evaluate.baselines.ease_l2 is {values['ease_l2']!r}, expected a positive number")
    return values


def rank_baselines(state: dict[str, np.ndarray], n_items: int, users: np.ndarray, k: int,
                   params: dict[str, Any]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Top-K lists of every baseline for `users`, and notes on baselines that were skipped."""
    params = baseline_params(params)
    matrix = interaction_matrix(state["seen_indptr"], state["seen_indices"], n_items)
    rankings = {"popularity": popularity_top_k(item_counts(matrix), users, state, k)}
    if n_items > params["max_items"]:
        note = (f"item-kNN and EASE skipped: the catalog has {n_items} items, more than "
                f"evaluate.baselines.max_items ({params['max_items']}); both build an items x items matrix")
        log.warning("%s", note)
        return rankings, [note]

    knn = item_knn_weights(matrix, params["knn_neighbours"])
    rankings["item_knn"] = item_item_top_k(knn, matrix, users, state, k)
    ease = ease_weights(matrix, float(params["ease_l2"]))
    rankings["ease"] = item_item_top_k(ease, matrix, users, state, k)
    return rankings, []
