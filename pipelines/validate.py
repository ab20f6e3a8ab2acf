"""Validate stage: Great Expectations suites over the ingested tables.

Run as `python -m pipelines.validate` (the DVC stage `validate`). Each table
of the data contract has one suite, built in Python from the `validate`
section of params.yaml by the `*_expectations` functions below; to add a
check, append an expectation to the right function. A failed expectation
stops the stage with a summary naming the expectation, the column, the number
of offending rows and a few offending values, and `reports/validation.json`
keeps the full result.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from pipelines import config
from pipelines.errors import DataError
from pipelines.io import write_json

log = logging.getLogger(__name__)

VALIDATION_REPORT = config.REPORTS_DIR / "validation.json"
MAX_EXAMPLES = 5
ID_COLUMNS = {"interactions": ("user_id", "item_id"), "items": ("item_id",), "users": ("user_id",)}
# A day of slack over the run time, so that clocks that disagree a little do not fail the run.
FUTURE_SLACK_SECONDS = 86_400

STRING_TYPES = ["str", "string", "StringDtype", "object"]
INTEGER_TYPES = ["int64", "int32", "Int64Dtype", "Int32Dtype"]
FLOAT_TYPES = ["float64", "float32", "Float64Dtype"]


@dataclass
class CheckResult:
    """The outcome of one expectation on one table."""

    table: str
    expectation: str
    column: str | None
    success: bool
    unexpected_count: int = 0
    examples: list[Any] = field(default_factory=list)
    observed: Any = None

    def describe(self) -> str:
        where = f"{self.table}.{self.column}" if self.column else self.table
        text = f"{self.expectation} on {where}"
        if self.unexpected_count:
            text += f": {self.unexpected_count} offending row(s), e.g. {self.examples}"
        elif self.observed is not None:
            text += f": observed {self.observed}"
        return text


def _gx():
    # Great Expectations takes seconds to import, so only the stage pays for it.
    import great_expectations as gx

    return gx


def interactions_expectations(params: dict[str, Any], tables: dict[str, pd.DataFrame], run_time: float) -> list:
    gx = _gx()
    expect = gx.expectations
    floor = int(pd.Timestamp(params["timestamp_min"], tz="UTC").timestamp())
    return [
        *_schema(expect, {"user_id": STRING_TYPES, "item_id": STRING_TYPES,
                          "timestamp": INTEGER_TYPES, "rating": FLOAT_TYPES}),
        expect.ExpectColumnValuesToNotBeNull(column="user_id"),
        expect.ExpectColumnValuesToNotBeNull(column="item_id"),
        expect.ExpectColumnValuesToNotBeNull(column="timestamp"),
        expect.ExpectColumnValuesToBeBetween(
            column="rating", min_value=params["rating_min"], max_value=params["rating_max"]),
        expect.ExpectColumnValuesToBeBetween(
            column="timestamp", min_value=floor, max_value=int(run_time) + FUTURE_SLACK_SECONDS),
        expect.ExpectColumnValuesToBeInSet(column="user_id", value_set=_ids(tables["users"], "user_id")),
        expect.ExpectColumnValuesToBeInSet(column="item_id", value_set=_ids(tables["items"], "item_id")),
    ]


def items_expectations(params: dict[str, Any], tables: dict[str, pd.DataFrame], run_time: float) -> list:
    expect = _gx().expectations
    return [
        *_schema(expect, {"item_id": STRING_TYPES, "title": STRING_TYPES, "categories": STRING_TYPES,
                          "release_year": INTEGER_TYPES, "image_path": STRING_TYPES}),
        expect.ExpectColumnValuesToNotBeNull(column="item_id"),
        expect.ExpectColumnValuesToBeUnique(column="item_id"),
    ]


def users_expectations(params: dict[str, Any], tables: dict[str, pd.DataFrame], run_time: float) -> list:
    expect = _gx().expectations
    return [
        *_schema(expect, {"user_id": STRING_TYPES}),
        expect.ExpectColumnValuesToNotBeNull(column="user_id"),
        expect.ExpectColumnValuesToBeUnique(column="user_id"),
    ]


SUITES = {
    "interactions": interactions_expectations,
    "items": items_expectations,
    "users": users_expectations,
}


def _schema(expect, columns: dict[str, list[str]]) -> list:
    checks = []
    for column, types in columns.items():
        checks.append(expect.ExpectColumnToExist(column=column))
        checks.append(expect.ExpectColumnValuesToBeInTypeList(column=column, type_list=types))
    return checks


def _ids(frame: pd.DataFrame, column: str) -> list[str]:
    return frame[column].dropna().astype(str).unique().tolist()


def validate_tables(tables: dict[str, pd.DataFrame], params: dict[str, Any], run_time: float | None = None) -> list[CheckResult]:
    """Run every suite over its table and return one result per expectation."""
    gx = _gx()
    run_time = time.time() if run_time is None else run_time
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    source = context.data_sources.add_pandas("shoprec")
    results: list[CheckResult] = []
    for table, build in SUITES.items():
        suite = context.suites.add(gx.ExpectationSuite(name=table))
        for expectation in build(params, tables, run_time):
            suite.add_expectation(expectation)
        batch = source.add_dataframe_asset(name=table).add_batch_definition_whole_dataframe(table).get_batch(
            batch_parameters={"dataframe": tables[table]})
        outcome = batch.validate(suite, result_format={
            "result_format": "COMPLETE",
            "unexpected_index_column_names": list(ID_COLUMNS[table]),
            "partial_unexpected_count": MAX_EXAMPLES,
        })
        results.extend(_check_result(table, item) for item in outcome.results)
    return results


def _check_result(table: str, item) -> CheckResult:
    result = item.result or {}
    # Rows named by their ids (with the offending value) where GX can, else bare values.
    rows = result.get("unexpected_index_list") or result.get("partial_unexpected_list") or []
    examples = [_plain_row(row) for row in rows[:MAX_EXAMPLES]]
    observed = result.get("observed_value")
    if item.exception_info and item.exception_info.get("raised_exception"):
        observed = item.exception_info.get("exception_message")
    return CheckResult(
        table=table,
        expectation=item.expectation_config.type,
        column=item.expectation_config.kwargs.get("column"),
        success=bool(item.success),
        unexpected_count=int(result.get("unexpected_count") or 0),
        examples=examples,
        observed=_plain(observed),
    )


def _plain(value: Any) -> Any:
    """Make numpy scalars and NaN printable and JSON-friendly."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def _plain_row(row: Any) -> Any:
    if isinstance(row, dict):
        return {key: _plain(value) for key, value in row.items()}
    return _plain(row)


def summarise(results: list[CheckResult]) -> str:
    failed = [result for result in results if not result.success]
    lines = [f"data validation: {len(results) - len(failed)} of {len(results)} checks passed"]
    lines += [f"  FAILED {result.describe()}" for result in failed]
    return "\n".join(lines)


def load_tables(folder) -> dict[str, pd.DataFrame]:
    tables = {}
    for table in config.TABLES:
        path = folder / f"{table}.parquet"
        if not path.is_file():
            raise DataError(f"{path}: file not found; run the ingest stage first")
        tables[table] = pd.read_parquet(path)
    return tables


def main() -> None:
    from pipelines.cli import run_stage

    def stage() -> None:
        params = config.section(config.load_params(), "validate")
        root = config.workspace()
        results = validate_tables(load_tables(root / config.INGESTED_DIR), params)
        passed = all(result.success for result in results)
        write_json({"passed": passed, "checks": [asdict(result) for result in results]},
                   root / VALIDATION_REPORT)
        summary = summarise(results)
        if not passed:
            raise DataError(summary)
        log.info("%s", summary)

    run_stage("validate", stage)


if __name__ == "__main__":
    main()
