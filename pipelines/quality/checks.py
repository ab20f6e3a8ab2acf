"""The named checks of the data-quality gate, their severity and their results.

A check is one rule about the data with a stable name such as
`interactions.rating_range`. It is enforced by one or more Great Expectations
expectations, which carry the name in their `meta`. Each check is `block`
(the run stops) or `warn` (the run goes on), set in `validate.severity` of
params.yaml.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pipelines.errors import ConfigError

BLOCK = "block"
WARN = "warn"
SEVERITIES = (BLOCK, WARN)

# Check name -> (kind, what the check requires). The kind groups checks in reports and benchmarks.
CHECKS: dict[str, tuple[str, str]] = {
    "interactions.schema": ("schema", "columns user_id, item_id, timestamp, rating exist with contract types"),
    "interactions.not_null": ("nulls", "no null user_id, item_id, timestamp or rating"),
    "interactions.rating_range": ("ranges", "rating lies in [rating_min, rating_max]"),
    "interactions.rating_values": ("sets", "rating is one of rating_values (when set)"),
    "interactions.timestamp_floor": ("timestamps", "no event before timestamp_min"),
    "interactions.timestamp_future": ("timestamps", "no event later than the run date plus one day"),
    "interactions.freshness": ("timestamps", "the newest event is at most freshness_max_days before the run date"),
    "interactions.duplicate_events": ("duplicates", "no two events share user_id, item_id and timestamp"),
    "interactions.known_users": ("integrity", "every user_id of an event is in the users table"),
    "interactions.known_items": ("integrity", "every item_id of an event is in the items table"),
    "items.schema": ("schema", "columns item_id, title, categories, release_year, image_path exist with contract types"),
    "items.not_null": ("nulls", "no null item_id"),
    "items.unique_ids": ("uniqueness", "item_id is unique"),
    "items.category_values": ("sets", "every category is one of category_values (when set)"),
    "items.release_year_range": ("ranges", "release_year lies in [release_year_min, run year + 1]"),
    "users.schema": ("schema", "column user_id exists as text"),
    "users.not_null": ("nulls", "no null user_id"),
    "users.unique_ids": ("uniqueness", "user_id is unique"),
    "images.path_present": ("images", "every item has an image_path when some items have one"),
    "images.inside_folder": ("images", "image_path resolves inside images.folder"),
    "images.exists": ("images", "the image file exists"),
    "images.decodes": ("images", "the image file decodes completely"),
    "images.mode": ("images", "the image mode is one of images.modes"),
    "images.size": ("images", "width and height lie in [images.min_side, images.max_side] pixels"),
    "snapshot.row_count": ("snapshot", "interactions rows / last good rows lies in the configured band"),
    "snapshot.new_users": ("snapshot", "share of users not in the last good snapshot is at most the maximum"),
    "snapshot.new_items": ("snapshot", "share of items not in the last good snapshot is at most the maximum"),
    "snapshot.rating_drift": ("snapshot", "drift of the rating distribution is at most the maximum"),
    "snapshot.item_popularity_drift": ("snapshot", "drift of the interaction share of popular items is at most the maximum"),
    "snapshot.user_activity_drift": ("snapshot", "drift of the events-per-user distribution is at most the maximum"),
}


def kind_of(check: str) -> str:
    return CHECKS[check][0]


def resolve_severities(mapping: Any) -> dict[str, str]:
    """Map every check to its severity from `validate.severity`; checks left out block.

    `mapping` is nested by table, as in params.yaml: `{interactions: {freshness: warn}}`.
    """
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, dict):
        raise ConfigError(f"params.yaml: validate.severity is {mapping!r}, expected a mapping of tables to checks")
    severities = {check: BLOCK for check in CHECKS}
    for table, checks in mapping.items():
        if not isinstance(checks, dict):
            raise ConfigError(f"params.yaml: validate.severity.{table} is {checks!r}, expected a mapping of checks")
        for name, severity in checks.items():
            check = f"{table}.{name}"
            if check not in CHECKS:
                raise ConfigError(
                    f"params.yaml: validate.severity.{check} is not a check; expected one of: {', '.join(CHECKS)}")
            if severity not in SEVERITIES:
                raise ConfigError(
                    f"params.yaml: validate.severity.{check} is {severity!r}, expected one of: {', '.join(SEVERITIES)}")
            severities[check] = severity
    return severities


@dataclass
class CheckResult:
    """The outcome of one expectation, under the check it belongs to."""

    check: str
    severity: str
    table: str
    expectation: str
    column: str | None
    success: bool
    unexpected_count: int = 0
    element_count: int | None = None
    observed: Any = None
    threshold: dict[str, Any] = field(default_factory=dict)
    examples: list[Any] = field(default_factory=list)
    error: str | None = None

    def describe(self) -> str:
        """Return one line: the check, where, what was found against what is allowed, and examples."""
        where = f"{self.table}.{self.column}" if self.column else self.table
        text = f"{self.check}: {self.expectation} on {where}"
        if self.error:
            return f"{text}: could not be evaluated ({self.error})"
        if self.unexpected_count:
            total = f" of {self.element_count}" if self.element_count is not None else ""
            text += f": {self.unexpected_count}{total} row(s) offend"
        elif self.observed is not None:
            text += f": observed {_show(self.observed, self.column)}"
        if self.threshold:
            text += f", allowed {_format_threshold(self.threshold, self.column)}"
        if self.examples:
            text += f"; e.g. {self.examples}"
        return text


@dataclass
class SkippedCheck:
    """A check that did not run, and why."""

    check: str
    reason: str


def _format_threshold(threshold: dict[str, Any], column: str | None) -> str:
    if "min_value" in threshold or "max_value" in threshold:
        low = threshold.get("min_value")
        high = threshold.get("max_value")
        if low is None:
            return f"at most {_show(high, column)}"
        if high is None:
            return f"at least {_show(low, column)}"
        return f"[{_show(low, column)}, {_show(high, column)}]"
    return ", ".join(f"{key}={value}" for key, value in threshold.items())


def _show(value: Any, column: str | None) -> str:
    """Format a value for the summary; Unix times of the timestamp column also as UTC dates."""
    if column == "timestamp" and isinstance(value, (int, float)):
        date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(value))
        return f"{int(value)} ({date})"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
