"""The profile of accepted interactions, and how new interactions compare with it.

A profile keeps what later runs compare against: the row count, the user
ids, the event count of each item, and two distributions with their bins
fixed at profiling time. The three distributions compared are:

- ratings: equal-width bins over [rating_min, rating_max];
- item popularity: the interaction share of each item among the
  `HEAD_ITEMS` most popular of the profile or of the new data, plus one bin
  for all other items. Per-item shares over the whole catalog would drift by
  chance alone when most items have few events;
- user activity: events per user, in bins at the deciles of the profiled
  data (so a change in volume moves it too).

Drift between two distributions is the population stability index (PSI) or
the Jensen-Shannon distance (base 2, between 0 and 1). Two samples of one
distribution differ by chance, the more so the smaller they are, so each
drift measure comes with a sampling allowance that the gate adds to its
threshold: negligible for large data, and large enough for a small shop not
to fail on noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

HEAD_ITEMS = 100
RATING_BINS = 10
ACTIVITY_QUANTILES = 10
# Floor for empty bins in the PSI, whose logarithm is undefined at zero.
PSI_FLOOR = 1e-4
# The sampling allowance is this multiple of the mean drift of two samples of one distribution.
# For 10 bins it is about the 97th percentile of that drift (a chi-square with 9 degrees of freedom).
NOISE_FACTOR = 2.0
MAX_EXAMPLES = 5


@dataclass
class Profile:
    rows: int
    newest_timestamp: int
    rating_edges: list[float]
    rating_shares: list[float]
    activity_edges: list[float]
    activity_shares: list[float]
    user_ids: np.ndarray
    item_ids: np.ndarray
    # Events per item, in the order of item_ids.
    item_counts: np.ndarray


@dataclass
class Counts:
    """Per-user and per-item event counts of one interactions table, computed once per run."""

    rows: int
    newest_timestamp: int
    ratings: pd.Series
    user_counts: pd.Series
    item_counts: pd.Series


@dataclass
class Measure:
    """One number compared with a threshold, with up to five examples that explain it."""

    value: float
    examples: list
    # Added to the threshold of drift measures; see `sampling_allowance`.
    allowance: float = 0.0


def count_interactions(interactions: pd.DataFrame) -> Counts:
    return Counts(
        rows=len(interactions),
        newest_timestamp=int(interactions["timestamp"].max()) if len(interactions) else 0,
        ratings=interactions["rating"],
        user_counts=interactions["user_id"].value_counts(),
        item_counts=interactions["item_id"].value_counts(),
    )


def build_profile(counts: Counts, rating_min: float, rating_max: float) -> Profile:
    """Fix the bins from this data and record its distributions in them."""
    rating_edges = np.linspace(rating_min, rating_max, RATING_BINS + 1)
    deciles = np.linspace(0, 1, ACTIVITY_QUANTILES + 1)[1:-1]
    activity_edges = np.unique(np.quantile(counts.user_counts.to_numpy(), deciles))
    return Profile(
        rows=counts.rows,
        newest_timestamp=counts.newest_timestamp,
        rating_edges=rating_edges.tolist(),
        rating_shares=_shares(_rating_histogram(counts.ratings, rating_edges)),
        activity_edges=activity_edges.tolist(),
        activity_shares=_shares(_activity_histogram(counts.user_counts, activity_edges)),
        user_ids=counts.user_counts.index.to_numpy(dtype=object),
        item_ids=counts.item_counts.index.to_numpy(dtype=object),
        item_counts=counts.item_counts.to_numpy(dtype=np.int64),
    )


def compare(profile: Profile, counts: Counts, metric: str) -> dict[str, Measure]:
    """Measure new interactions against the last good profile, keyed by check name."""
    ratings = _shares(_rating_histogram(counts.ratings, np.asarray(profile.rating_edges)))
    head, last_good_popularity, popularity = _popularity(profile, counts)
    activity = _shares(_activity_histogram(counts.user_counts, np.asarray(profile.activity_edges)))
    events = (profile.rows, counts.rows)
    users = (len(profile.user_ids), len(counts.user_counts))
    return {
        "snapshot.row_count": Measure(round(counts.rows / max(profile.rows, 1), 4),
                                      [{"rows": counts.rows, "last_good_rows": profile.rows}]),
        "snapshot.new_users": _new_ids(counts.user_counts.index, profile.user_ids),
        "snapshot.new_items": _new_ids(counts.item_counts.index, profile.item_ids),
        "snapshot.rating_drift": _drift(profile.rating_shares, ratings, events, metric,
                                        _rating_labels(profile.rating_edges), "rating"),
        "snapshot.item_popularity_drift": _drift(last_good_popularity, popularity, events, metric,
                                                 [*head, "(other items)"], "item_id"),
        "snapshot.user_activity_drift": _drift(profile.activity_shares, activity, users, metric,
                                               _activity_labels(profile.activity_edges), "events_per_user"),
    }


def population_stability_index(expected: list[float], actual: list[float]) -> float:
    expected_shares = _floored(np.asarray(expected, dtype=float))
    actual_shares = _floored(np.asarray(actual, dtype=float))
    return float(np.sum((actual_shares - expected_shares) * np.log(actual_shares / expected_shares)))


def jensen_shannon_distance(expected: list[float], actual: list[float]) -> float:
    p = np.asarray(expected, dtype=float)
    q = np.asarray(actual, dtype=float)
    p, q = p / p.sum(), q / q.sum()
    middle = (p + q) / 2
    divergence = (_kl_bits(p, middle) + _kl_bits(q, middle)) / 2
    return float(np.sqrt(max(divergence, 0.0)))


def _kl_bits(p: np.ndarray, q: np.ndarray) -> float:
    mask = p > 0
    return float(np.sum(p[mask] * np.log2(p[mask] / q[mask])))


def sampling_allowance(expected: list[float], actual: list[float], sizes: tuple[int, int], metric: str) -> float:
    """Return NOISE_FACTOR times the drift that two samples of these sizes from one distribution show on average.

    For k occupied bins and samples of n1 and n2 observations, the PSI, which
    approximates a chi-square statistic, averages (k - 1)(1/n1 + 1/n2). The
    Jensen-Shannon divergence in bits is about the PSI / (8 ln 2) for small
    differences, and the distance is its square root.
    """
    bins = int(np.count_nonzero((np.asarray(expected) > 0) | (np.asarray(actual) > 0)))
    psi = NOISE_FACTOR * max(bins - 1, 0) * sum(1 / max(size, 1) for size in sizes)
    return psi if metric == "psi" else math.sqrt(psi / (8 * math.log(2)))


def _floored(shares: np.ndarray) -> np.ndarray:
    shares = np.maximum(shares, PSI_FLOOR)
    return shares / shares.sum()


def _drift(expected: list[float], actual: list[float], sizes: tuple[int, int], metric: str, labels: list[str],
           name: str) -> Measure:
    distance = population_stability_index if metric == "psi" else jensen_shannon_distance
    value = round(distance(expected, actual), 4)
    allowance = round(sampling_allowance(expected, actual, sizes, metric), 4)
    change = np.abs(np.asarray(actual) - np.asarray(expected))
    worst = np.argsort(-change, kind="stable")[:MAX_EXAMPLES]
    examples = [{name: labels[i], "last_good_share": round(expected[i], 4), "share": round(actual[i], 4)}
                for i in worst if change[i] > 0]
    return Measure(value, examples, allowance)


def _new_ids(current: pd.Index, known: np.ndarray) -> Measure:
    """Return the share of `current` ids missing from `known`, with the first few of them."""
    fresh = current[~current.isin(known)]
    share = len(fresh) / len(current) if len(current) else 0.0
    return Measure(round(share, 4), [str(value) for value in fresh[:MAX_EXAMPLES]])


def _rating_histogram(ratings: pd.Series, edges: np.ndarray) -> np.ndarray:
    values = ratings.dropna().to_numpy(dtype=float).clip(edges[0], edges[-1])
    return np.histogram(values, bins=edges)[0]


def _popularity(profile: Profile, counts: Counts) -> tuple[list[str], list[float], list[float]]:
    """Return the head items of either side and both sides' shares over them plus an "other items" bin."""
    last_good = pd.Series(profile.item_counts, index=pd.Index(profile.item_ids, dtype="string"))
    current = counts.item_counts.set_axis(counts.item_counts.index.astype("string"))
    head = last_good.nlargest(HEAD_ITEMS).index.union(current.nlargest(HEAD_ITEMS).index)
    shares = []
    for side in (last_good, current):
        in_head = side.reindex(head, fill_value=0).to_numpy(dtype=float)
        shares.append(_shares(np.append(in_head, side.sum() - in_head.sum())))
    return [str(item) for item in head], shares[0], shares[1]


def _activity_histogram(user_counts: pd.Series, edges: np.ndarray) -> np.ndarray:
    bins = np.searchsorted(edges, user_counts.to_numpy(), side="right")
    return np.bincount(bins, minlength=len(edges) + 1)


def _shares(counts: np.ndarray) -> list[float]:
    total = counts.sum()
    if total == 0:
        return [0.0] * len(counts)
    return (counts / total).tolist()


def _rating_labels(edges: list[float]) -> list[str]:
    labels = [f"[{low:g}, {high:g})" for low, high in zip(edges[:-2], edges[1:-1])]
    return [*labels, f"[{edges[-2]:g}, {edges[-1]:g}]"]


def _activity_labels(edges: list[float]) -> list[str]:
    """Name the bins of `np.searchsorted(edges, counts, side="right")`."""
    if not edges:
        return ["any"]
    middle = [f"[{low:g}, {high:g})" for low, high in zip(edges[:-1], edges[1:])]
    return [f"< {edges[0]:g}", *middle, f">= {edges[-1]:g}"]
