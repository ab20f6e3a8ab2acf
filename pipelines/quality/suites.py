"""One Great Expectations suite per table, built in Python from the rules.

The suites are code, versioned with the repository; params.yaml only sets
their thresholds. Every expectation carries its check name in `meta["check"]`
and a description that starts with that name, which Data Docs shows in place
of GE's generic sentence. To add a check, name it in `checks.CHECKS` and
append an expectation here.

Checks that need more than one table, or files, or the last good snapshot,
judge derived frames: the interactions gain `user_id_in_users` and
`item_id_in_items` flags, images are described by `images.inspect_images`, and
the snapshot comparison is a one-row frame of measured values. Such
expectations name the column they judge in `meta["column"]` (for example
`item_id` for the flag `item_id_in_items`), which reports show instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.quality.drift import Measure
from pipelines.quality.settings import Rules

STRING_TYPES = ["str", "string", "StringDtype", "object"]
INTEGER_TYPES = ["int64", "int32", "Int64Dtype", "Int32Dtype"]
FLOAT_TYPES = ["float64", "float32", "Float64Dtype"]
INTERACTION_TYPES = {"user_id": STRING_TYPES, "item_id": STRING_TYPES, "timestamp": INTEGER_TYPES, "rating": FLOAT_TYPES}
ITEM_TYPES = {"item_id": STRING_TYPES, "title": STRING_TYPES, "categories": STRING_TYPES,
              "release_year": INTEGER_TYPES, "image_path": STRING_TYPES}
USER_TYPES = {"user_id": STRING_TYPES}
# A day of slack over the run time, so that clocks that disagree a little do not fail the run.
FUTURE_SLACK_SECONDS = 86_400
DAY_SECONDS = 86_400


@dataclass
class Suite:
    """A table to validate, its expectations and the columns that identify an offending row."""

    name: str
    frame: pd.DataFrame
    expectations: list
    index_columns: list[str]
    # Examples measured outside GE (snapshot comparisons), keyed by check name.
    evidence: dict[str, list] = field(default_factory=dict)


def _gx():
    # Great Expectations takes seconds to import, so only a validation run pays for it.
    import great_expectations as gx

    return gx


def _expect(name: str, check: str, description: str, meta: dict | None = None, **kwargs):
    expectation_class = getattr(_gx().expectations, name)
    return expectation_class(**kwargs, meta={"check": check, **(meta or {})}, description=f"{check}: {description}")


def _present(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    return [column for column in columns if column in frame.columns]


def _schema(table: str, frame: pd.DataFrame, types: dict[str, list[str]]) -> list:
    expectations = []
    for column, type_list in types.items():
        expectations.append(_expect("ExpectColumnToExist", f"{table}.schema", f"column {column} exists",
                                    column=column))
        if column in frame.columns:
            expectations.append(_expect("ExpectColumnValuesToBeInTypeList", f"{table}.schema",
                                        f"{column} has one of the types {', '.join(type_list)}",
                                        column=column, type_list=type_list))
    return expectations


def _not_null(table: str, frame: pd.DataFrame, columns: list[str]) -> list:
    return [_expect("ExpectColumnValuesToNotBeNull", f"{table}.not_null", f"{column} is never null", column=column)
            for column in _present(frame, columns)]


def _date(seconds: int) -> str:
    return pd.Timestamp(seconds, unit="s", tz="UTC").strftime("%Y-%m-%d %H:%M UTC")


# ---------------------------------------------------------------- tables


def interactions_suite(tables: dict[str, pd.DataFrame], rules: Rules) -> Suite:
    frame = _with_reference_flags(tables)
    floor = int(rules.timestamp_min.timestamp())
    latest = rules.run_seconds + FUTURE_SLACK_SECONDS
    stale = rules.run_seconds - int(rules.freshness_max_days * DAY_SECONDS)
    expectations = [
        *_schema("interactions", frame, INTERACTION_TYPES),
        *_not_null("interactions", frame, ["user_id", "item_id", "timestamp", "rating"]),
    ]
    if "rating" in frame.columns:
        expectations.append(_expect(
            "ExpectColumnValuesToBeBetween", "interactions.rating_range",
            f"rating lies in [{rules.rating_min:g}, {rules.rating_max:g}]",
            column="rating", min_value=rules.rating_min, max_value=rules.rating_max))
        if rules.rating_values:
            expectations.append(_expect(
                "ExpectColumnValuesToBeInSet", "interactions.rating_values",
                f"rating is one of {', '.join(f'{value:g}' for value in rules.rating_values)}",
                column="rating", value_set=list(rules.rating_values)))
    if "timestamp" in frame.columns:
        expectations += [
            _expect("ExpectColumnValuesToBeBetween", "interactions.timestamp_floor",
                    f"timestamp is not before {_date(floor)} (validate.timestamp_min)",
                    column="timestamp", min_value=floor),
            _expect("ExpectColumnValuesToBeBetween", "interactions.timestamp_future",
                    f"timestamp is not after {_date(latest)} (the run date plus one day)",
                    column="timestamp", max_value=latest),
            _expect("ExpectColumnMaxToBeBetween", "interactions.freshness",
                    f"the newest timestamp is not before {_date(stale)} "
                    f"({rules.freshness_max_days:g} days before the run date)",
                    column="timestamp", min_value=stale),
        ]
    key = _present(frame, ["user_id", "item_id", "timestamp"])
    if len(key) == 3:
        expectations.append(_expect("ExpectCompoundColumnsToBeUnique", "interactions.duplicate_events",
                                    "no two events share user_id, item_id and timestamp", column_list=key))
    for column, check, table in (("user_id", "interactions.known_users", "users"),
                                 ("item_id", "interactions.known_items", "items")):
        flag = f"{column}_in_{table}"
        if flag in frame.columns:
            expectations.append(_expect("ExpectColumnValuesToBeInSet", check,
                                        f"{column} of every event is in the {table} table",
                                        meta={"column": column}, column=flag, value_set=[True]))
    return Suite("interactions", frame, expectations, _present(frame, ["user_id", "item_id", "timestamp"]))


def _with_reference_flags(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Return the interactions with one flag per foreign key: is the id in its table?"""
    interactions = tables["interactions"]
    flags = {}
    for column, table in (("user_id", "users"), ("item_id", "items")):
        if column in interactions.columns and column in tables[table].columns:
            flags[f"{column}_in_{table}"] = is_in(interactions[column], tables[table][column])
    return interactions.assign(**flags)


def is_in(values: pd.Series, reference: pd.Series) -> np.ndarray:
    """Return whether each value occurs in `reference`, as a boolean array.

    Arrow's hash lookup takes less than half the time of `Series.isin` on
    10M ids (see docs/benchmarks.md).
    """
    array = pa.array(values)
    lookup = pa.array(reference.dropna().unique()).cast(array.type)
    return pc.is_in(array, value_set=lookup).to_numpy(zero_copy_only=False)


def items_suite(tables: dict[str, pd.DataFrame], rules: Rules) -> Suite:
    frame = tables["items"]
    expectations = [
        *_schema("items", frame, ITEM_TYPES),
        *_not_null("items", frame, ["item_id"]),
    ]
    if "item_id" in frame.columns:
        expectations.append(_expect("ExpectColumnValuesToBeUnique", "items.unique_ids", "item_id is unique",
                                    column="item_id"))
    if rules.category_values and "categories" in frame.columns:
        expectations.append(_expect(
            "ExpectColumnValuesToMatchRegex", "items.category_values",
            f"every category is one of {', '.join(rules.category_values)}",
            column="categories", regex=category_pattern(rules.category_values)))
    if "release_year" in frame.columns:
        latest_year = rules.run_time.year + 1
        expectations.append(_expect(
            "ExpectColumnValuesToBeBetween", "items.release_year_range",
            f"release_year lies in [{rules.release_year_min}, {latest_year}]",
            column="release_year", min_value=rules.release_year_min, max_value=latest_year))
    return Suite("items", frame, expectations, _present(frame, ["item_id"]))


def category_pattern(values: tuple[str, ...]) -> str:
    """Return a regex that matches categories joined by '|', each one of `values`."""
    one = "(?:" + "|".join(re.escape(value) for value in values) + ")"
    return f"^{one}(?:\\|{one})*$"


def users_suite(tables: dict[str, pd.DataFrame], rules: Rules) -> Suite:
    frame = tables["users"]
    expectations = [
        *_schema("users", frame, USER_TYPES),
        *_not_null("users", frame, ["user_id"]),
    ]
    if "user_id" in frame.columns:
        expectations.append(_expect("ExpectColumnValuesToBeUnique", "users.unique_ids", "user_id is unique",
                                    column="user_id"))
    return Suite("users", frame, expectations, _present(frame, ["user_id"]))


def images_suite(images: pd.DataFrame, rules: Rules) -> Suite:
    """Judge the frame of `images.inspect_images`: one row per item."""
    limits = rules.images
    expectations = [
        _expect("ExpectColumnValuesToNotBeNull", "images.path_present", "every item has an image_path",
                column="image_path"),
        _expect("ExpectColumnValuesToBeInSet", "images.inside_folder",
                f"image_path resolves inside the {limits.folder}/ folder of the workspace",
                meta={"column": "image_path"}, column="inside_folder", value_set=[True]),
        _expect("ExpectColumnValuesToBeInSet", "images.exists", "the image file exists",
                meta={"column": "image_path"}, column="exists", value_set=[True]),
        _expect("ExpectColumnValuesToBeInSet", "images.decodes", "the image file decodes",
                meta={"column": "image_path"}, column="decodes", value_set=[True]),
        _expect("ExpectColumnValuesToBeInSet", "images.mode", f"the image mode is one of {', '.join(limits.modes)}",
                meta={"column": "image_path"}, column="mode", value_set=list(limits.modes)),
    ]
    for side in ("width", "height"):
        expectations.append(_expect(
            "ExpectColumnValuesToBeBetween", "images.size",
            f"image {side} lies in [{limits.min_side}, {limits.max_side}] pixels",
            column=side, min_value=limits.min_side, max_value=limits.max_side))
    return Suite("images", images, expectations, ["item_id", "image_path"])


def snapshot_suite(measures: dict[str, Measure], rules: Rules) -> Suite:
    """Judge the measured comparison with the last good snapshot, a frame of one row."""
    limits, drift = rules.snapshot, rules.drift
    frame = pd.DataFrame({check.split(".", 1)[1]: [measure.value] for check, measure in measures.items()})
    bounds = {
        "snapshot.row_count": (limits.row_count_min_ratio, limits.row_count_max_ratio,
                               "interactions rows / last good rows"),
        "snapshot.new_users": (None, limits.new_users_max_share, "share of users not in the last good snapshot"),
        "snapshot.new_items": (None, limits.new_items_max_share, "share of items not in the last good snapshot"),
        "snapshot.rating_drift": (None, drift.rating_max, f"{drift.metric} of the rating distribution"),
        "snapshot.item_popularity_drift": (None, drift.item_popularity_max,
                                           f"{drift.metric} of the interaction share of popular items"),
        "snapshot.user_activity_drift": (None, drift.user_activity_max,
                                         f"{drift.metric} of the events-per-user distribution"),
    }
    expectations = []
    for check, (low, high, what) in bounds.items():
        allowance = measures[check].allowance
        allowed = f"at most {high:g}" if low is None else f"in [{low:g}, {high:g}]"
        if allowance:
            allowed += f" + {allowance:g} for sampling noise"
        # The frame has one row, so its maximum is the measured value, which Data Docs then show.
        expectations.append(_expect("ExpectColumnMaxToBeBetween", check, f"{what} is {allowed}",
                                    meta={"sampling_allowance": allowance} if allowance else None,
                                    column=check.split(".", 1)[1], min_value=low,
                                    max_value=round(high + allowance, 4)))
    evidence = {check: measure.examples for check, measure in measures.items()}
    return Suite("snapshot", frame, expectations, [], evidence)
