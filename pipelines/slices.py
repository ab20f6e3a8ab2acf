"""Slices of the test set: user segments and item popularity buckets.

User segments split the test users by how many items they interacted with
in the training and validation data: `users:new` (at most
`evaluate.slices.new_user_max_interactions`) and `users:active` (the rest).

Item buckets rank the catalog by training and validation interactions. The
most popular items that together hold the first `head` share of interactions
are `items:head`, the next `torso` share `items:torso`, the rest of the items
with interactions `items:tail`, and items without any interaction `items:cold`.
An item slice keeps only the test targets in its bucket and the users who
have one, so its recall is the share of those targets found.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.errors import ConfigError

BUCKETS = ("head", "torso", "tail", "cold")


def slice_params(params: dict[str, Any] | None) -> dict[str, Any]:
    """Validate `evaluate.slices` and fill in defaults."""
    values = {"new_user_max_interactions": 30, "head_share": 0.5, "torso_share": 0.3, **(params or {})}
    limit = values["new_user_max_interactions"]
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ConfigError(f"params.yaml: evaluate.slices.new_user_max_interactions is {limit!r}, "
                          "expected a non-negative integer")
    head, torso = values["head_share"], values["torso_share"]
    shares_valid = all(isinstance(share, (int, float)) and not isinstance(share, bool) and share > 0
                       for share in (head, torso))
    if not shares_valid or head + torso >= 1:
        raise ConfigError(f"params.yaml: evaluate.slices.head_share {head!r} and torso_share {torso!r} are invalid, "
                          "expected positive shares of interactions with head_share + torso_share < 1")
    return values


def user_segments(history_sizes: np.ndarray, new_user_max: int) -> dict[str, np.ndarray]:
    """Boolean masks over test users: at most `new_user_max` known interactions, or more."""
    new = history_sizes <= new_user_max
    return {"users:new": new, "users:active": ~new}


def item_buckets(counts: np.ndarray, head_share: float, torso_share: float) -> np.ndarray:
    """Bucket name of every item index (index 0, padding, is "cold").

    Items are ranked by count, most popular first, ties by index. An item's
    bucket depends on the share of all interactions held by the items ranked
    before it.
    """
    labels = np.full(len(counts), "cold", dtype=object)
    total = counts[1:].sum()
    if total == 0:
        return labels
    order = np.argsort(-counts[1:], kind="stable") + 1
    share_before = (np.cumsum(counts[order]) - counts[order]) / total
    ranked = np.where(share_before < head_share, "head",
                      np.where(share_before < head_share + torso_share, "torso", "tail"))
    labels[order] = ranked
    labels[counts == 0] = "cold"
    labels[0] = "cold"
    return labels


def restrict_targets(indptr: np.ndarray, indices: np.ndarray, keep: np.ndarray):
    """Keep the targets whose item is in `keep` (boolean per item index).

    Returns the rows (test users) that keep at least one target, and the CSR
    arrays of their kept targets.
    """
    kept = keep[indices]
    rows_of_targets = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    counts = np.bincount(rows_of_targets[kept], minlength=len(indptr) - 1)
    rows = np.flatnonzero(counts)
    return rows, np.r_[0, np.cumsum(counts[rows])], indices[kept]
