"""The `validate` section of params.yaml, read into typed rules with clear errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from pipelines.errors import ConfigError
from pipelines.quality.checks import resolve_severities

DRIFT_METRICS = ("psi", "js")


@dataclass(frozen=True)
class ImageRules:
    folder: str
    modes: tuple[str, ...]
    min_side: int
    max_side: int


@dataclass(frozen=True)
class SnapshotRules:
    row_count_min_ratio: float
    row_count_max_ratio: float
    new_users_max_share: float
    new_items_max_share: float


@dataclass(frozen=True)
class DriftRules:
    metric: str
    rating_max: float
    item_popularity_max: float
    user_activity_max: float


@dataclass(frozen=True)
class Rules:
    """Everything the gate checks against, for one run."""

    run_time: pd.Timestamp
    rating_min: float
    rating_max: float
    rating_values: tuple[float, ...]
    timestamp_min: pd.Timestamp
    freshness_max_days: float
    category_values: tuple[str, ...]
    release_year_min: int
    images: ImageRules
    snapshot: SnapshotRules
    drift: DriftRules
    severity: dict[str, str]
    quarantine_keep: int

    @property
    def run_seconds(self) -> int:
        return int(self.run_time.timestamp())


def rules_from_params(params: dict[str, Any], now: pd.Timestamp | None = None) -> Rules:
    """Read the `validate` params; `now` is the run time when `run_date` is empty."""
    reader = _Reader(params, "validate")
    rules = Rules(
        run_time=_run_time(reader.get("run_date", str), now),
        rating_min=reader.number("rating_min"),
        rating_max=reader.number("rating_max"),
        rating_values=tuple(float(value) for value in reader.number_list("rating_values")),
        timestamp_min=_date(reader.get("timestamp_min", str), "validate.timestamp_min"),
        freshness_max_days=reader.number("freshness_max_days", minimum=0),
        category_values=tuple(reader.get("category_values", list)),
        release_year_min=int(reader.number("release_year_min")),
        images=_image_rules(reader.child("images")),
        snapshot=_snapshot_rules(reader.child("snapshot")),
        drift=_drift_rules(reader.child("drift")),
        severity=resolve_severities(params.get("severity")),
        quarantine_keep=int(reader.number("quarantine_keep", minimum=1)),
    )
    if rules.rating_min > rules.rating_max:
        raise ConfigError(
            f"params.yaml: validate.rating_min ({rules.rating_min}) is greater than rating_max ({rules.rating_max})")
    return rules


def _image_rules(reader: _Reader) -> ImageRules:
    rules = ImageRules(
        folder=reader.get("folder", str),
        modes=tuple(reader.get("modes", list)),
        min_side=int(reader.number("min_side", minimum=1)),
        max_side=int(reader.number("max_side", minimum=1)),
    )
    if rules.min_side > rules.max_side:
        raise ConfigError(
            f"params.yaml: validate.images.min_side ({rules.min_side}) is greater than max_side ({rules.max_side})")
    return rules


def _snapshot_rules(reader: _Reader) -> SnapshotRules:
    return SnapshotRules(
        row_count_min_ratio=reader.number("row_count_min_ratio", minimum=0),
        row_count_max_ratio=reader.number("row_count_max_ratio", minimum=0),
        new_users_max_share=reader.number("new_users_max_share", minimum=0),
        new_items_max_share=reader.number("new_items_max_share", minimum=0),
    )


def _drift_rules(reader: _Reader) -> DriftRules:
    metric = reader.get("metric", str)
    if metric not in DRIFT_METRICS:
        raise ConfigError(f"params.yaml: validate.drift.metric is {metric!r}, expected one of: {', '.join(DRIFT_METRICS)}")
    return DriftRules(
        metric=metric,
        rating_max=reader.number("rating_max", minimum=0),
        item_popularity_max=reader.number("item_popularity_max", minimum=0),
        user_activity_max=reader.number("user_activity_max", minimum=0),
    )


def _run_time(run_date: str, now: pd.Timestamp | None) -> pd.Timestamp:
    if run_date:
        return _date(run_date, "validate.run_date")
    return pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now).tz_convert("UTC")


def _date(text: str, name: str) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(text)
    except ValueError as error:
        raise ConfigError(f"params.yaml: {name} is {text!r}, expected an ISO 8601 date such as 2024-01-31") from error
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


class _Reader:
    """Typed access to one params mapping, naming the dotted key in every error."""

    def __init__(self, mapping: Any, prefix: str) -> None:
        if not isinstance(mapping, dict):
            raise ConfigError(f"params.yaml: {prefix} is {mapping!r}, expected a mapping")
        self.mapping = mapping
        self.prefix = prefix

    def child(self, key: str) -> _Reader:
        return _Reader(self.get(key, dict), f"{self.prefix}.{key}")

    def get(self, key: str, kind: type) -> Any:
        if key not in self.mapping:
            raise ConfigError(f"params.yaml: {self.prefix}.{key} is missing")
        value = self.mapping[key]
        if value is None and kind is list:
            return []
        if value is None and kind is str:
            return ""
        if not isinstance(value, kind):
            raise ConfigError(
                f"params.yaml: {self.prefix}.{key} is {value!r}, expected a {kind.__name__}")
        return value

    def number(self, key: str, minimum: float | None = None) -> float:
        value = self.get(key, object)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"params.yaml: {self.prefix}.{key} is {value!r}, expected a number")
        if minimum is not None and value < minimum:
            raise ConfigError(f"params.yaml: {self.prefix}.{key} is {value}, expected at least {minimum}")
        return float(value)

    def number_list(self, key: str) -> list[float]:
        values = self.get(key, list)
        for value in values:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"params.yaml: {self.prefix}.{key} contains {value!r}, expected numbers only")
        return values
