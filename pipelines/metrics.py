"""Ranking metrics over full-catalog top-K lists.

Targets are given per user as CSR arrays (`indptr`, `indices`): user row r's
relevant items are `indices[indptr[r]:indptr[r + 1]]`. Each metric returns one
value per user, so callers can average or bootstrap them. Catalog coverage is
the one metric of the whole set of lists.
"""

from __future__ import annotations

import numpy as np
import torch

# Scores at or below this mean "never recommend" (padding and already seen items).
EXCLUDED = float("-inf")


def hit_matrix(top_items: np.ndarray, indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Boolean (users, K): whether each recommended item is one of that user's targets."""
    n_users, k = top_items.shape
    width = int(max(top_items.max(initial=0), indices.max(initial=0))) + 1
    rows = np.repeat(np.arange(n_users), np.diff(indptr))
    target_keys = rows * width + indices
    top_keys = np.arange(n_users)[:, None] * width + top_items
    return np.isin(top_keys, target_keys)


def target_counts(indptr: np.ndarray) -> np.ndarray:
    return np.diff(indptr)


def recall_at_k(hits: np.ndarray, counts: np.ndarray) -> np.ndarray:
    return hits.sum(axis=1) / np.maximum(counts, 1)


def hit_rate_at_k(hits: np.ndarray) -> np.ndarray:
    return hits.any(axis=1).astype(np.float64)


def ndcg_at_k(hits: np.ndarray, counts: np.ndarray) -> np.ndarray:
    k = hits.shape[1]
    discounts = 1.0 / np.log2(np.arange(k) + 2)
    dcg = (hits * discounts).sum(axis=1)
    ideal_cumulative = np.r_[0.0, np.cumsum(discounts)]
    idcg = ideal_cumulative[np.minimum(counts, k)]
    return np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)


def mrr_at_k(hits: np.ndarray) -> np.ndarray:
    first = np.argmax(hits, axis=1)
    return np.where(hits.any(axis=1), 1.0 / (first + 1), 0.0)


def coverage_at_k(top_items: np.ndarray, n_items: int) -> float:
    """Share of the catalog that appears in at least one user's top-K list."""
    return len(np.unique(top_items)) / n_items if n_items else 0.0


def popularity_percentiles(counts: np.ndarray) -> np.ndarray:
    """Share of catalog items whose interaction count is at most each item's count.

    `counts` is indexed by item index with index 0 as padding; the result is
    too, with 0.0 at index 0. The most popular item gets 1.0.
    """
    catalog = np.sort(counts[1:])
    percentiles = np.zeros(len(counts), dtype=np.float64)
    if len(catalog):
        percentiles[1:] = np.searchsorted(catalog, counts[1:], side="right") / len(catalog)
    return percentiles


def popularity_bias_at_k(top_items: np.ndarray, percentiles: np.ndarray) -> np.ndarray:
    """Mean popularity percentile of each user's recommended items (1.0: only the most popular)."""
    return percentiles[top_items].mean(axis=1)


def per_user_metrics(top_items: np.ndarray, indptr: np.ndarray, indices: np.ndarray,
                     percentiles: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Recall, NDCG, MRR and hit rate of each user at K = top_items.shape[1].

    With item popularity `percentiles` (see `popularity_percentiles`) the
    popularity bias of each user's list is added.
    """
    hits = hit_matrix(top_items, indptr, indices)
    counts = target_counts(indptr)
    values = {
        "recall": recall_at_k(hits, counts),
        "ndcg": ndcg_at_k(hits, counts),
        "mrr": mrr_at_k(hits),
        "hit_rate": hit_rate_at_k(hits),
    }
    if percentiles is not None:
        values["popularity_bias"] = popularity_bias_at_k(top_items, percentiles)
    return values


def metric_name(split: str, metric: str, k: int) -> str:
    """Return the name a metric has in every file: `<split>_<metric>@<K>`, e.g. `test_ndcg@10`."""
    return f"{split}_{metric}@{k}"


def summary(top_items: np.ndarray, indptr: np.ndarray, indices: np.ndarray, n_items: int,
            split: str, percentiles: np.ndarray | None = None) -> dict[str, float]:
    """Mean metrics named `<split>_<metric>@<K>`, plus catalog coverage."""
    k = top_items.shape[1]
    per_user = per_user_metrics(top_items, indptr, indices, percentiles)
    values = {metric_name(split, name, k): float(column.mean()) if len(column) else 0.0
              for name, column in per_user.items()}
    values[metric_name(split, "coverage", k)] = coverage_at_k(top_items, n_items)
    return values


def ndcg_curve(top_items: np.ndarray, indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Mean NDCG@k for k = 1 .. top_items.shape[1], one value per k."""
    hits = hit_matrix(top_items, indptr, indices)
    counts = target_counts(indptr)
    if not len(hits):
        return np.zeros(top_items.shape[1])
    return np.array([ndcg_at_k(hits[:, :k], counts).mean() for k in range(1, hits.shape[1] + 1)])


def mask_seen(scores: torch.Tensor, rows: np.ndarray, indptr: np.ndarray, indices: np.ndarray) -> torch.Tensor:
    """Set the scores of items each user has already seen to EXCLUDED, in place.

    `rows` are the CSR rows (user indices) of the users in `scores`, in order.
    """
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts
    batch_rows = np.repeat(np.arange(len(rows)), lengths)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    columns = indices[np.repeat(starts, lengths) + offsets]
    scores[torch.from_numpy(batch_rows), torch.from_numpy(columns)] = EXCLUDED
    return scores


def top_k(scores: torch.Tensor, k: int) -> np.ndarray:
    return torch.topk(scores, k, dim=1).indices.cpu().numpy()
