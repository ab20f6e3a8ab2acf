"""Run the suites with Great Expectations 1.x and build Data Docs.

Each run uses an ephemeral (in-memory) data context: the suites are code, so
nothing needs to be stored between runs, and the Data Docs site is written
as static HTML to the folder the caller names.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.quality.checks import CheckResult
from pipelines.quality.suites import Suite

log = logging.getLogger(__name__)

MAX_EXAMPLES = 5
# Expectation arguments that name where the check looks, not what it allows.
NOT_THRESHOLDS = {"column", "column_list", "batch_id", "result_format", "type_list", "mostly"}


def run_suites(suites: list[Suite], severities: dict[str, str], run_id: str, run_time: pd.Timestamp,
               docs_dir: Path | None = None) -> list[CheckResult]:
    """Validate every suite's frame and return one result per expectation.

    `run_time` is when the validation ran, as Data Docs show it. When
    `docs_dir` is given, the Data Docs site of this run replaces its contents.
    """
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import DataContextConfig, InMemoryStoreBackendDefaults

    # Without this, an ephemeral context (GE 1.24) adds a Data Docs site in a temporary folder it never deletes.
    stores = InMemoryStoreBackendDefaults(init_temp_docs_sites=False)
    context = gx.get_context(mode="ephemeral", project_config=DataContextConfig(store_backend_defaults=stores))
    context.variables.progress_bars = {"globally": False}
    staging = _add_docs_site(context, docs_dir)
    source = context.data_sources.add_pandas("shoprec")
    run = RunIdentifier(run_name=run_id, run_time=run_time.to_pydatetime())
    results: list[CheckResult] = []
    try:
        for suite in suites:
            outcome = _validate(gx, context, source, suite, run)
            results += [to_check_result(suite, item, severities) for item in outcome.results]
        if staging is not None:
            context.build_data_docs()
            _replace_folder(staging, docs_dir)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return results


def _validate(gx, context, source, suite: Suite, run):
    expectations = context.suites.add(gx.ExpectationSuite(name=suite.name))
    for expectation in suite.expectations:
        expectations.add_expectation(expectation)
    batch = source.add_dataframe_asset(name=suite.name).add_batch_definition_whole_dataframe(suite.name)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=suite.name, data=batch, suite=expectations))
    result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": MAX_EXAMPLES}
    if suite.index_columns:
        result_format["unexpected_index_column_names"] = suite.index_columns
    return definition.run(batch_parameters={"dataframe": suite.frame}, result_format=result_format, run_id=run)


def _add_docs_site(context, docs_dir: Path | None) -> Path | None:
    if docs_dir is None:
        return None
    docs_dir = Path(docs_dir)
    docs_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{docs_dir.name}.", dir=docs_dir.parent))
    context.add_data_docs_site("shoprec", {
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(staging)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    return staging


def _replace_folder(source: Path, target: Path) -> None:
    """Move `source` to `target`, replacing what was there."""
    if target.exists():
        shutil.rmtree(target)
    source.rename(target)


def to_check_result(suite: Suite, item, severities: dict[str, str]) -> CheckResult:
    config = item.expectation_config
    check = (config.meta or {}).get("check", f"{suite.name}.unnamed")
    result = item.result or {}
    rows = result.get("partial_unexpected_index_list") or result.get("partial_unexpected_list") or []
    examples = [_plain_row(row) for row in rows[:MAX_EXAMPLES]] or suite.evidence.get(check, [])[:MAX_EXAMPLES]
    error = None
    if item.exception_info and item.exception_info.get("raised_exception"):
        error = item.exception_info.get("exception_message")
    return CheckResult(
        check=check,
        severity=severities.get(check, "block"),
        table=suite.name,
        expectation=config.type,
        column=_column(config),
        success=bool(item.success),
        unexpected_count=int(result.get("unexpected_count") or 0),
        element_count=_plain(result.get("element_count")),
        observed=_plain(result.get("observed_value")),
        threshold=_threshold(config),
        examples=examples,
        error=error,
    )


def _threshold(config) -> dict[str, Any]:
    """Return what the expectation allows: its bounds or set, and any allowance recorded in its meta."""
    threshold = {key: _plain_row(value) for key, value in config.kwargs.items()
                 if key not in NOT_THRESHOLDS and value is not None}
    threshold.update({key: value for key, value in (config.meta or {}).items() if key not in ("check", "column")})
    return threshold


def _column(config) -> str | None:
    """Return the column a reader should look at: the one named in meta, else the one judged."""
    meta = config.meta or {}
    if "column" in meta:
        return meta["column"]
    columns = config.kwargs.get("column_list")
    return config.kwargs.get("column") or (", ".join(columns) if columns else None)


def _plain(value: Any) -> Any:
    """Make numpy scalars, pandas NA and NaN printable and JSON-friendly."""
    if value is pd.NA:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def _plain_row(row: Any) -> Any:
    if isinstance(row, dict):
        return {key: _plain(value) for key, value in row.items()}
    if isinstance(row, (list, tuple)):
        return [_plain(value) for value in row]
    return _plain(row)
