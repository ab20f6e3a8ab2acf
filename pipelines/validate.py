"""Validate stage: the data-quality gate between ingest and training.

Run as `python -m pipelines.validate` (the DVC stage `validate`). Reads the
ingested tables and the `validate` section of params.yaml, then:

1. runs one Great Expectations suite per table (`pipelines/quality/suites.py`):
   interactions, items, users, item images when the catalog names image files,
   and the comparison with the last good snapshot when there is one;
2. writes `reports/validation.json` (verdict, each failed check with its
   column, count or measured value, threshold and up to five offending rows),
   `reports/data_docs/` (GE Data Docs HTML) and a summary in the log;
3. on any failed `block` check, copies the rejected data and reports to
   `data/quality/quarantine/<run id>/` and exits non-zero, so no later stage
   runs. Otherwise it records the data as the new last good snapshot.

See docs/data-quality.md for every check, its params and the snapshot layout.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines import config
from pipelines.errors import DataError
from pipelines.io import write_json
from pipelines.quality import drift, engine, suites
from pipelines.quality.checks import CHECKS, SkippedCheck, kind_of
from pipelines.quality.images import has_images, inspect_images
from pipelines.quality.report import Outcome, report_json, summarise
from pipelines.quality.settings import Rules, rules_from_params
from pipelines.quality.snapshots import QUALITY_DIR, SnapshotStore

log = logging.getLogger(__name__)

VALIDATION_REPORT = config.VALIDATION_REPORT
DATA_DOCS_DIR = config.REPORTS_DIR / "data_docs"
DATA_DOCS_INDEX = str(DATA_DOCS_DIR / "index.html")


def load_tables(folder: Path) -> dict[str, pd.DataFrame]:
    tables = {}
    for table in config.TABLES:
        path = Path(folder) / f"{table}.parquet"
        if not path.is_file():
            raise DataError(f"{path}: file not found; run the ingest stage first")
        tables[table] = pd.read_parquet(path)
    return tables


def build_suites(tables: dict[str, pd.DataFrame], rules: Rules, root: Path,
                 last_good: tuple[str, drift.Profile] | None,
                 counts: drift.Counts) -> tuple[list[suites.Suite], list[SkippedCheck]]:
    """Build the suites this data calls for, and list the checks left out with the reason."""
    built = [suites.interactions_suite(tables, rules), suites.items_suite(tables, rules),
             suites.users_suite(tables, rules)]
    skipped = []
    if not rules.rating_values:
        skipped.append(SkippedCheck("interactions.rating_values", "validate.rating_values is empty"))
    if not rules.category_values:
        skipped.append(SkippedCheck("items.category_values", "validate.category_values is empty"))
    if has_images(tables["items"]):
        built.append(suites.images_suite(inspect_images(tables["items"], root, rules.images.folder), rules))
    else:
        skipped += _skip_kind("images", "the catalog has no image_path values")
    if last_good is None:
        skipped += _skip_kind("snapshot", "no last good snapshot yet (first run, or no run has passed so far)")
    else:
        measures = drift.compare(last_good[1], counts, rules.drift.metric)
        built.append(suites.snapshot_suite(measures, rules))
    return built, skipped


def _skip_kind(kind: str, reason: str) -> list[SkippedCheck]:
    return [SkippedCheck(check, reason) for check in CHECKS if kind_of(check) == kind]


def validate_tables(tables: dict[str, pd.DataFrame], rules: Rules, root: Path,
                    last_good: tuple[str, drift.Profile] | None = None, run_id: str = "adhoc",
                    docs_dir: Path | None = None, counts: drift.Counts | None = None) -> Outcome:
    """Run every check on the tables and return which failed, at which severity, and which were skipped."""
    counts = counts or drift.count_interactions(tables["interactions"])
    built, skipped = build_suites(tables, rules, root, last_good, counts)
    results = engine.run_suites(built, rules.severity, run_id, pd.Timestamp.now(tz="UTC"), docs_dir)
    return Outcome(run_id=run_id, run_date=rules.run_time.isoformat(), results=results, skipped=skipped,
                   compared_with=last_good[0] if last_good else None)


def gate(root: Path, params: dict[str, Any], source: dict[str, Any] | None = None,
         now: pd.Timestamp | None = None) -> Outcome:
    """Validate the ingested tables in workspace `root`, then quarantine them or accept them.

    Raises DataError naming every failed `block` check; the last good snapshot
    is then left as it was. `source` is the ingest params, kept with quarantined data.
    """
    rules = rules_from_params(params, now)
    store = SnapshotStore(root / QUALITY_DIR)
    tables = load_tables(root / config.INGESTED_DIR)
    counts = drift.count_interactions(tables["interactions"])
    last_good = store.load_last_good()
    run_id = current_run_id()
    outcome = validate_tables(tables, rules, root, last_good, run_id, root / DATA_DOCS_DIR, counts)
    summary = summarise(outcome)

    if outcome.blocked:
        folder = _quarantine(root, store, outcome, summary, source or {}, rules.quarantine_keep)
        blocks = outcome.failed_checks("block")
        raise DataError(f"{len(blocks)} block check(s) failed: {', '.join(blocks)}; "
                        f"rejected data quarantined in {folder}\n{summary}")

    write_json(report_json(outcome, DATA_DOCS_INDEX, None), root / VALIDATION_REPORT)
    log.log(logging.WARNING if outcome.failures else logging.INFO, "%s", summary)
    profile = drift.build_profile(counts, rules.rating_min, rules.rating_max)
    name = store.save_last_good(run_id, profile, {"run_date": outcome.run_date,
                                                  "saved_at": _utc_now()})
    log.info("accepted as last good snapshot %s", root / QUALITY_DIR / "snapshots" / name)
    return outcome


def _quarantine(root: Path, store: SnapshotStore, outcome: Outcome, summary: str, source: dict[str, Any],
                keep: int) -> Path:
    """Write the report, then keep it with the rejected tables, Data Docs and source files."""
    name = store.free_name(store.quarantine_dir, outcome.run_id)
    report = report_json(outcome, DATA_DOCS_INDEX, str((store.quarantine_dir / name).relative_to(root)))
    write_json(report, root / VALIDATION_REPORT)
    copies = {"validation.json": root / VALIDATION_REPORT, "data_docs": root / DATA_DOCS_DIR,
              **_source_files(root, source)}
    texts = {"summary.txt": summary + "\n", "ingest_params.json": json.dumps(source, indent=2, default=str) + "\n"}
    return store.quarantine(name, root / config.INGESTED_DIR, copies, texts, keep)


def _source_files(root: Path, source: dict[str, Any]) -> dict[str, Path]:
    """Return the raw files a `files` source read, keyed by their name in the quarantine folder."""
    if source.get("dataset") != "files":
        return {}
    files = {}
    for table, name in (source.get("files") or {}).items():
        if name:
            path = (root / name).resolve()
            files[f"source/{table}{path.suffix}"] = path
    return files


def current_run_id() -> str:
    """Return the scheduler's run id when there is one, else the UTC time of this run."""
    return (os.environ.get("AIRFLOW_CTX_DAG_RUN_ID") or os.environ.get("SHOPREC_RUN_ID")
            or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def main() -> None:
    from pipelines.cli import run_stage

    def stage() -> None:
        params = config.load_params()
        gate(config.workspace(), config.section(params, "validate"), source=params.get("ingest"))

    run_stage("validate", stage)


if __name__ == "__main__":
    main()
