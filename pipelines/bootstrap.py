"""Bootstrap confidence intervals over users.

Each resample draws the test users with replacement, which is the same as
giving every user a multinomial count of copies. One weight matrix of counts
is drawn per evaluation and reused for every system and metric, so the
interval of a difference between two systems is paired: both are scored on the
same resampled users. Intervals are percentile intervals.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.errors import ConfigError


def bootstrap_params(params: dict[str, Any] | None) -> dict[str, Any]:
    """Validate `evaluate.bootstrap` and fill in defaults."""
    values = {"resamples": 1000, "confidence": 0.95, "seed": 0, **(params or {})}
    resamples, confidence, seed = values["resamples"], values["confidence"], values["seed"]
    if not isinstance(resamples, int) or isinstance(resamples, bool) or resamples < 10:
        raise ConfigError(f"params.yaml: evaluate.bootstrap.resamples is {resamples!r}, expected an integer >= 10")
    if not isinstance(confidence, float) or not 0.5 <= confidence < 1.0:
        raise ConfigError(f"params.yaml: evaluate.bootstrap.confidence is {confidence!r}, expected a number in [0.5, 1)")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"params.yaml: evaluate.bootstrap.seed is {seed!r}, expected an integer")
    return values


def resample_weights(n_users: int, resamples: int, seed: int) -> np.ndarray:
    """Return (resamples, n_users) copy counts; each row sums to n_users."""
    rng = np.random.default_rng(seed)
    if n_users == 0:
        return np.zeros((resamples, 0))
    return rng.multinomial(n_users, np.full(n_users, 1.0 / n_users), size=resamples).astype(np.float64)


def resampled_means(per_user: dict[str, np.ndarray], weights: np.ndarray) -> dict[str, np.ndarray]:
    """Mean of each per-user metric in every resample, (resamples,) per metric."""
    if not per_user:
        return {}
    names = list(per_user)
    stacked = np.stack([per_user[name] for name in names], axis=1)  # (users, metrics)
    means = weights @ stacked / max(weights.shape[1], 1)
    return {name: means[:, column] for column, name in enumerate(names)}


def percentile_interval(samples: np.ndarray, confidence: float) -> dict[str, float]:
    low, high = np.quantile(samples, [(1 - confidence) / 2, (1 + confidence) / 2])
    return {"low": float(low), "high": float(high)}


def intervals(per_user: dict[str, np.ndarray], weights: np.ndarray, confidence: float) -> dict[str, dict[str, float]]:
    """Percentile interval of the mean of each per-user metric."""
    return {name: percentile_interval(samples, confidence)
            for name, samples in resampled_means(per_user, weights).items()}


def difference_intervals(candidate: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                         weights: np.ndarray, confidence: float) -> dict[str, dict[str, float]]:
    """Mean difference candidate - reference of each metric both have, with its paired interval."""
    differences = {name: candidate[name] - reference[name] for name in candidate if name in reference}
    result = {}
    for name, samples in resampled_means(differences, weights).items():
        result[name] = {"value": float(differences[name].mean()) if len(differences[name]) else 0.0,
                        **percentile_interval(samples, confidence)}
    return result
