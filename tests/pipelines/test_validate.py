import json
import logging
import os
import subprocess
import sys

import pandas as pd
import pytest

from pipelines import config, validate
from pipelines.errors import DataError
from pipelines.io import write_parquet_tables
from pipelines.quality import drift
from pipelines.quality.settings import rules_from_params
from pipelines.quality.snapshots import QUALITY_DIR
from tests.conftest import REPO

MOVIELENS_GENRES = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
                    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
                    "Western", "unknown"]


def params(**changes):
    """The repository's validate params with top-level keys replaced."""
    section = config.section(config.load_params(REPO / config.PARAMS_FILE), "validate")
    return {**section, **changes}


def severity(**changes):
    """The repository's severity mapping with {"table.check": severity} changes."""
    mapping = {table: dict(checks) for table, checks in params()["severity"].items()}
    for check, level in changes.items():
        table, name = check.split(".")
        mapping[table][name] = level
    return mapping


def copy_tables(tables):
    return {name: frame.copy() for name, frame in tables.items()}


def run(tables, root, last_good=None, **changes):
    rules = rules_from_params(params(**changes))
    return validate.validate_tables(tables, rules, root, last_good)


def failures(outcome):
    return {(result.check, result.column): result for result in outcome.failures}


def ingested_workspace(root, tables):
    write_parquet_tables(tables, root / config.INGESTED_DIR)
    return root


def last_good_name(root):
    return json.loads((root / QUALITY_DIR / "last_good.json").read_text())["snapshot"]


# ---------------------------------------------------------------- suites


def test_movielens_passes_every_block_check(movielens_tables, tmp_path):
    outcome = run(movielens_tables, tmp_path)
    assert outcome.failed_checks("block") == []
    # MovieLens-100K ends in 1998, long before any run date today.
    assert outcome.failed_checks("warn") == ["interactions.freshness"]


def test_movielens_passes_every_check_on_its_day(movielens_tables, tmp_path):
    outcome = run(movielens_tables, tmp_path, run_date="1998-04-23", rating_values=[1, 2, 3, 4, 5],
                  category_values=MOVIELENS_GENRES)
    assert outcome.failures == []
    ran = {result.check for result in outcome.results}
    assert {"interactions.rating_values", "items.category_values", "interactions.freshness"} <= ran


def test_movielens_growth_passes_snapshot_checks(movielens_tables, tmp_path):
    interactions = movielens_tables["interactions"].sort_values("timestamp", kind="stable")
    earlier = drift.build_profile(drift.count_interactions(interactions.iloc[:90_000]), 1.0, 5.0)
    outcome = run(movielens_tables, tmp_path, last_good=("earlier", earlier))
    snapshot_checks = [result for result in outcome.results if result.check.startswith("snapshot.")]
    assert len(snapshot_checks) == 6
    assert [result.check for result in snapshot_checks if not result.success] == []
    assert outcome.compared_with == "earlier"


def test_rating_out_of_range_named(movielens_tables, tmp_path):
    tables = copy_tables(movielens_tables)
    tables["interactions"].loc[10, "rating"] = 9.0
    result = failures(run(tables, tmp_path))[("interactions.rating_range", "rating")]
    assert result.unexpected_count == 1
    assert result.threshold == {"min_value": 1.0, "max_value": 5.0}
    assert result.examples[0]["rating"] == 9.0
    assert result.examples[0]["user_id"] == tables["interactions"].loc[10, "user_id"]


def test_unknown_item_named(movielens_tables, tmp_path):
    tables = copy_tables(movielens_tables)
    tables["interactions"].loc[3, "item_id"] = "no-such-item"
    result = failures(run(tables, tmp_path))[("interactions.known_items", "item_id")]
    assert result.unexpected_count == 1
    assert result.examples[0]["item_id"] == "no-such-item"


def test_duplicate_item_ids_fail(movielens_tables, tmp_path):
    tables = copy_tables(movielens_tables)
    tables["items"] = pd.concat([tables["items"], tables["items"].head(2)], ignore_index=True)
    assert failures(run(tables, tmp_path))[("items.unique_ids", "item_id")].unexpected_count == 4


def test_duplicate_events_fail(movielens_tables, tmp_path):
    tables = copy_tables(movielens_tables)
    tables["interactions"] = pd.concat([tables["interactions"], tables["interactions"].iloc[[5]]],
                                       ignore_index=True)
    result = failures(run(tables, tmp_path))[("interactions.duplicate_events", "user_id, item_id, timestamp")]
    assert result.unexpected_count == 2


def test_future_timestamp_fails(movielens_tables, tmp_path):
    tables = copy_tables(movielens_tables)
    tables["interactions"].loc[0, "timestamp"] = 4_000_000_000
    outcome = run(tables, tmp_path, run_date="2023-11-14")
    assert ("interactions.timestamp_future", "timestamp") in failures(outcome)


def test_missing_column_fails(movielens_tables, tmp_path):
    tables = copy_tables(movielens_tables)
    tables["items"] = tables["items"].drop(columns="title")
    assert ("items.schema", "title") in failures(run(tables, tmp_path))


def test_summary_lists_failed_checks(movielens_tables, tmp_path):
    tables = copy_tables(movielens_tables)
    tables["interactions"].loc[10, "rating"] = 0.0
    summary = validate.summarise(run(tables, tmp_path))
    assert ("BLOCK interactions.rating_range: expect_column_values_to_be_between on interactions.rating: "
            "1 of 100000 row(s) offend, allowed [1, 5]") in summary
    assert "SKIP  snapshot.row_count" in summary


def test_load_tables_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"interactions\.parquet: file not found; run the ingest stage first"):
        validate.load_tables(tmp_path)


# ---------------------------------------------------------------- the stage: snapshot, quarantine, severity


def test_first_run_skips_snapshot_checks(movielens_tables, tmp_path):
    root = ingested_workspace(tmp_path, movielens_tables)
    outcome = validate.gate(root, params())
    report = json.loads((root / validate.VALIDATION_REPORT).read_text())
    skipped = {item["check"]: item["reason"] for item in report["skipped"]}
    assert skipped["snapshot.rating_drift"].startswith("no last good snapshot yet")
    assert report["passed"] is True
    assert report["warnings"] == ["interactions.freshness"]
    assert (root / validate.DATA_DOCS_DIR / "index.html").is_file()
    assert last_good_name(root) == outcome.run_id


def test_shifted_ratings_blocked_and_quarantined(movielens_tables, tmp_path, monkeypatch):
    root = ingested_workspace(tmp_path, movielens_tables)
    monkeypatch.setenv("SHOPREC_RUN_ID", "good")
    validate.gate(root, params())
    tables = copy_tables(movielens_tables)
    tables["interactions"]["rating"] = (tables["interactions"]["rating"] - 2).clip(lower=1)
    write_parquet_tables(tables, root / config.INGESTED_DIR)
    monkeypatch.setenv("SHOPREC_RUN_ID", "shifted")

    with pytest.raises(DataError, match=r"1 block check\(s\) failed: snapshot\.rating_drift; "
                                        r"rejected data quarantined in .*quarantine/shifted"):
        validate.gate(root, params(), source={"dataset": "movielens-100k"})

    assert last_good_name(root) == "good"
    report = json.loads((root / validate.VALIDATION_REPORT).read_text())
    assert report["passed"] is False
    assert report["compared_with"] == "good"
    failed = {result["check"]: result for result in report["failed"]}["snapshot.rating_drift"]
    assert failed["observed"] > failed["threshold"]["max_value"]
    # Ratings 1, 2 and 3 all became 1: the bin of 1 changed most.
    assert failed["examples"][0]["rating"] == "[1, 1.4)"
    assert failed["examples"][0]["share"] > 0.3
    quarantine = root / report["quarantine"]
    assert pd.read_parquet(quarantine / "interactions.parquet")["rating"].max() == 3.0
    for name in ("validation.json", "summary.txt", "data_docs/index.html", "ingest_params.json"):
        assert (quarantine / name).is_file(), name


def test_resample_passes_snapshot_checks(movielens_tables, tmp_path):
    root = ingested_workspace(tmp_path, movielens_tables)
    validate.gate(root, params())
    tables = copy_tables(movielens_tables)
    tables["interactions"] = tables["interactions"].sample(frac=0.95, random_state=11).reset_index(drop=True)
    write_parquet_tables(tables, root / config.INGESTED_DIR)
    outcome = validate.gate(root, params())
    snapshot_results = [result for result in outcome.results if result.check.startswith("snapshot.")]
    assert len(snapshot_results) == 6
    assert all(result.success for result in snapshot_results)


def test_warn_check_lets_run_continue(movielens_tables, tmp_path, caplog, monkeypatch):
    root = ingested_workspace(tmp_path, movielens_tables)
    monkeypatch.setenv("SHOPREC_RUN_ID", "first")
    validate.gate(root, params())
    tables = copy_tables(movielens_tables)
    tables["interactions"].loc[7, "rating"] = 6.0
    write_parquet_tables(tables, root / config.INGESTED_DIR)
    monkeypatch.setenv("SHOPREC_RUN_ID", "second")

    with caplog.at_level(logging.WARNING, logger="pipelines.validate"):
        outcome = validate.gate(root, params(severity=severity(**{"interactions.rating_range": "warn"})))

    assert sorted(outcome.failed_checks("warn")) == ["interactions.freshness", "interactions.rating_range"]
    assert "WARN  interactions.rating_range" in caplog.text
    report = json.loads((root / validate.VALIDATION_REPORT).read_text())
    assert report["passed"] is True
    failed = {result["check"]: result for result in report["failed"]}
    assert failed["interactions.rating_range"]["examples"][0]["rating"] == 6.0
    assert last_good_name(root) == "second"


def test_quarantine_keeps_newest_runs(movielens_tables, tmp_path, monkeypatch):
    tables = copy_tables(movielens_tables)
    tables["interactions"].loc[0, "rating"] = 0.0
    root = ingested_workspace(tmp_path, tables)
    for run_id in ("one", "two"):
        monkeypatch.setenv("SHOPREC_RUN_ID", run_id)
        with pytest.raises(DataError, match="interactions.rating_range"):
            validate.gate(root, params(quarantine_keep=1))
    assert [path.name for path in (root / QUALITY_DIR / "quarantine").iterdir()] == ["two"]
    assert not (root / QUALITY_DIR / "last_good.json").exists()


def test_missing_snapshot_named(movielens_tables, tmp_path):
    root = ingested_workspace(tmp_path, movielens_tables)
    (root / QUALITY_DIR).mkdir(parents=True)
    (root / QUALITY_DIR / "last_good.json").write_text('{"snapshot": "gone"}')
    with pytest.raises(DataError, match=r"snapshots/gone: last good snapshot named by .*last_good\.json is missing"):
        validate.gate(root, params())


def test_stage_exits_nonzero_naming_check(movielens_tables, workspace):
    tables = copy_tables(movielens_tables)
    tables["interactions"].loc[4, "item_id"] = "ghost"
    write_parquet_tables(tables, workspace / config.INGESTED_DIR)
    env = {**os.environ, "SHOPREC_WORKSPACE": str(workspace)}
    result = subprocess.run([sys.executable, "-m", "pipelines.validate"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "validate stage failed: 1 block check(s) failed: interactions.known_items" in result.stderr
    assert "'item_id': 'ghost'" in result.stderr
