import pandas as pd
import pytest

from pipelines import validate
from pipelines.errors import DataError

PARAMS = {"rating_min": 1.0, "rating_max": 5.0, "timestamp_min": "1995-01-01"}


def copy_tables(tables):
    return {name: frame.copy() for name, frame in tables.items()}


def failures(results):
    return {(result.table, result.expectation, result.column): result for result in results if not result.success}


def test_movielens_passes_every_check(movielens_tables):
    results = validate.validate_tables(movielens_tables, PARAMS)
    assert results
    assert failures(results) == {}


def test_rating_out_of_range_named(movielens_tables):
    tables = copy_tables(movielens_tables)
    tables["interactions"].loc[10, "rating"] = 9.0
    failed = failures(validate.validate_tables(tables, PARAMS))
    result = failed[("interactions", "expect_column_values_to_be_between", "rating")]
    assert result.unexpected_count == 1
    assert result.examples[0]["rating"] == 9.0
    assert result.examples[0]["user_id"] == tables["interactions"].loc[10, "user_id"]


def test_unknown_item_named(movielens_tables):
    tables = copy_tables(movielens_tables)
    tables["interactions"].loc[3, "item_id"] = "no-such-item"
    failed = failures(validate.validate_tables(tables, PARAMS))
    result = failed[("interactions", "expect_column_values_to_be_in_set", "item_id")]
    assert result.examples[0]["item_id"] == "no-such-item"


def test_duplicate_item_ids_fail(movielens_tables):
    tables = copy_tables(movielens_tables)
    tables["items"] = pd.concat([tables["items"], tables["items"].head(2)], ignore_index=True)
    failed = failures(validate.validate_tables(tables, PARAMS))
    assert failed[("items", "expect_column_values_to_be_unique", "item_id")].unexpected_count == 4


def test_future_timestamp_fails(movielens_tables):
    tables = copy_tables(movielens_tables)
    tables["interactions"].loc[0, "timestamp"] = 4_000_000_000
    failed = failures(validate.validate_tables(tables, PARAMS, run_time=1_700_000_000))
    assert ("interactions", "expect_column_values_to_be_between", "timestamp") in failed


def test_missing_column_fails(movielens_tables):
    tables = copy_tables(movielens_tables)
    tables["users"] = tables["users"].rename(columns={"user_id": "customer"})
    tables["users"]["user_id"] = tables["users"]["customer"]
    tables["items"] = tables["items"].drop(columns="title")
    failed = failures(validate.validate_tables(tables, PARAMS))
    assert ("items", "expect_column_to_exist", "title") in failed


def test_summary_lists_failed_checks(movielens_tables):
    tables = copy_tables(movielens_tables)
    tables["interactions"].loc[10, "rating"] = 0.0
    summary = validate.summarise(validate.validate_tables(tables, PARAMS))
    assert "FAILED expect_column_values_to_be_between on interactions.rating: 1 offending row(s)" in summary


def test_load_tables_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"interactions\.parquet: file not found; run the ingest stage first"):
        validate.load_tables(tmp_path)
