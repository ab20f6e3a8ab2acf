"""Index maps, item features and user histories shared by training, evaluation and serving.

Items and users are numbered from 1 in the order of the ingested tables;
index 0 is padding, for histories shorter than the window and for unknown ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.errors import DataError

# Release years are grouped into buckets of this many years; bucket 0 is "unknown".
YEAR_BUCKET_SIZE = 5


@dataclass
class Catalog:
    """Index maps and item feature arrays for one dataset."""

    item_ids: list[str]
    user_ids: list[str]
    category_names: list[str]
    item_categories: np.ndarray  # (n_items + 1, max categories per item), 0 = none
    item_year_buckets: np.ndarray  # (n_items + 1,), 0 = unknown

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_year_buckets(self) -> int:
        return int(self.item_year_buckets.max(initial=0))

    def item_index(self) -> dict[str, int]:
        return {item_id: index + 1 for index, item_id in enumerate(self.item_ids)}

    def user_index(self) -> dict[str, int]:
        return {user_id: index + 1 for index, user_id in enumerate(self.user_ids)}


def build_catalog(items: pd.DataFrame, users: pd.DataFrame) -> Catalog:
    """Number items and users and encode item categories and release years."""
    item_ids = items["item_id"].astype(str).tolist()
    user_ids = users["user_id"].astype(str).tolist()
    split_categories = [
        [] if pd.isna(text) or not text else str(text).split("|") for text in items["categories"]
    ]
    category_names = sorted({name for names in split_categories for name in names})
    category_index = {name: index + 1 for index, name in enumerate(category_names)}
    width = max((len(names) for names in split_categories), default=0) or 1
    item_categories = np.zeros((len(item_ids) + 1, width), dtype=np.int64)
    for row, names in enumerate(split_categories, start=1):
        item_categories[row, : len(names)] = [category_index[name] for name in names]
    return Catalog(item_ids, user_ids, category_names, item_categories, year_buckets(items["release_year"]))


def year_buckets(years: pd.Series) -> np.ndarray:
    """Map release years to buckets 1.. of YEAR_BUCKET_SIZE years; unknown years to 0."""
    values = pd.to_numeric(years, errors="coerce").astype("float64").to_numpy()
    buckets = np.zeros(len(values) + 1, dtype=np.int64)
    known = ~np.isnan(values)
    if known.any():
        first = np.nanmin(values)
        buckets[1:][known] = ((values[known] - first) // YEAR_BUCKET_SIZE).astype(np.int64) + 1
    return buckets


def encode(frame: pd.DataFrame, catalog: Catalog, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Return the user and item indices of an interactions frame; unknown ids are an error."""
    users = frame["user_id"].astype(str).map(catalog.user_index())
    items = frame["item_id"].astype(str).map(catalog.item_index())
    for column, indices in (("user_id", users), ("item_id", items)):
        missing = indices.isna().to_numpy()
        if missing.any():
            row = int(np.flatnonzero(missing)[0])
            raise DataError(
                f"{name}: {column} {frame[column].iloc[row]!r} (row {row + 1}) is not in the catalog"
            )
    return users.to_numpy(np.int64), items.to_numpy(np.int64)


def first_rows(users: np.ndarray) -> np.ndarray:
    """Return, for each row, the index of the first row of the same user (rows sorted by user)."""
    n = len(users)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.r_[True, users[1:] != users[:-1]]
    return np.maximum.accumulate(np.where(starts, np.arange(n), 0))


def windows_at(items: np.ndarray, user_first_rows: np.ndarray, rows: np.ndarray, length: int) -> np.ndarray:
    """Return the `length` items before each of `rows`, oldest first, 0-padded on the left.

    Only the selected rows are materialised, so a training set of any size
    needs no (rows x length) matrix in memory.
    """
    positions = rows[:, None] - length + np.arange(length)[None, :]
    valid = positions >= user_first_rows[rows][:, None]
    return np.where(valid, items[np.clip(positions, 0, None)], 0)


def history_windows(users: np.ndarray, items: np.ndarray, length: int) -> np.ndarray:
    """For each interaction, the user's `length` previous items, oldest first, 0-padded on the left.

    Rows must be sorted by user and then by time, as the split stage writes them.
    """
    if len(users) == 0:
        return np.zeros((0, length), dtype=np.int64)
    return windows_at(items, first_rows(users), np.arange(len(users)), length)


def latest_histories(users: np.ndarray, items: np.ndarray, n_users: int, length: int) -> np.ndarray:
    """Return each user's `length` most recent items, one row per user index.

    Rows must be sorted by user and then by time.
    """
    histories = np.zeros((n_users + 1, length), dtype=np.int64)
    if len(users) == 0:
        return histories
    ends = np.flatnonzero(np.r_[users[1:] != users[:-1], True])
    starts = np.r_[0, ends[:-1] + 1]
    positions = ends[:, None] - length + 1 + np.arange(length)[None, :]
    valid = positions >= starts[:, None]
    histories[users[ends]] = np.where(valid, items[np.clip(positions, 0, None)], 0)
    return histories


def seen_items(users: np.ndarray, items: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Items each user has interacted with, as CSR arrays (indptr, indices)."""
    order = np.argsort(users, kind="stable")
    counts = np.bincount(users, minlength=n_users + 1)
    indptr = np.r_[0, np.cumsum(counts)]
    return indptr, items[order]


def concat_sorted(*parts: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Merge (users, items, timestamps) parts into one sequence sorted by user and time."""
    users = np.concatenate([part[0] for part in parts])
    items = np.concatenate([part[1] for part in parts])
    times = np.concatenate([part[2] for part in parts])
    order = np.lexsort((np.arange(len(users)), times, users))
    return users[order], items[order]
