"""The gate's outcome, its plain-text summary and its JSON report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pipelines.quality.checks import BLOCK, WARN, CheckResult, SkippedCheck


@dataclass
class Outcome:
    """Every expectation result of one run, plus the checks that did not run."""

    run_id: str
    run_date: str
    results: list[CheckResult]
    skipped: list[SkippedCheck] = field(default_factory=list)
    compared_with: str | None = None

    @property
    def failures(self) -> list[CheckResult]:
        return [result for result in self.results if not result.success]

    def failed_checks(self, severity: str) -> list[str]:
        """Return the names of failed checks of one severity, in the order they ran."""
        names = [result.check for result in self.failures if result.severity == severity]
        return list(dict.fromkeys(names))

    @property
    def blocked(self) -> bool:
        return bool(self.failed_checks(BLOCK))


def summarise(outcome: Outcome) -> str:
    """Return the plain-text summary for the log: counts, then one line per failure and skipped group."""
    results = outcome.results
    blocks, warnings = outcome.failed_checks(BLOCK), outcome.failed_checks(WARN)
    lines = [
        f"data validation {outcome.run_id}: {len(results) - len(outcome.failures)} of {len(results)} "
        f"expectations passed; {len(blocks)} block failure(s), {len(warnings)} warning(s)"
    ]
    for result in outcome.failures:
        lines.append(f"  {result.severity.upper():5s} {result.describe()}")
    for reason, checks in _group_skipped(outcome.skipped).items():
        lines.append(f"  SKIP  {', '.join(checks)}: {reason}")
    if outcome.compared_with:
        lines.append(f"  compared with last good snapshot {outcome.compared_with}")
    return "\n".join(lines)


def _group_skipped(skipped: list[SkippedCheck]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for item in skipped:
        groups.setdefault(item.reason, []).append(item.check)
    return groups


def report_json(outcome: Outcome, data_docs: str | None, quarantine: str | None) -> dict[str, Any]:
    """Return the JSON report: the verdict, each failed check in full, and every result."""
    return {
        "passed": not outcome.blocked,
        "run_id": outcome.run_id,
        "run_date": outcome.run_date,
        "block_failures": outcome.failed_checks(BLOCK),
        "warnings": outcome.failed_checks(WARN),
        "failed": [asdict(result) for result in outcome.failures],
        "skipped": [asdict(item) for item in outcome.skipped],
        "compared_with": outcome.compared_with,
        "data_docs": data_docs,
        "quarantine": quarantine,
        "checks": [asdict(result) for result in outcome.results],
    }
