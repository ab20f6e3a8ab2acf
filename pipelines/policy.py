"""Promotion policy for compressed candidates: the smallest one that ranks almost as well as the teacher.

A candidate qualifies when it was built and measured, its NDCG@K is at least
(1 - max_ndcg_drop) x the teacher's, and its p99 top-K latency for one user is
within the budget. The smallest qualifying file wins, ties going to the lower
latency; with none qualifying, the teacher ships.
"""

from __future__ import annotations

from typing import Any

from pipelines.errors import ConfigError

TEACHER = "teacher"


def check_policy(params: dict[str, Any], prefix: str = "compress.policy") -> dict[str, float | None]:
    """Validate the policy params: max_ndcg_drop in [0, 1), max_latency_p99_ms positive or null."""
    drop = params.get("max_ndcg_drop")
    if isinstance(drop, bool) or not isinstance(drop, (int, float)) or not 0 <= drop < 1:
        raise ConfigError(f"params.yaml: {prefix}.max_ndcg_drop is {drop!r}, expected a number in [0, 1)")
    budget = params.get("max_latency_p99_ms")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0):
        raise ConfigError(f"params.yaml: {prefix}.max_latency_p99_ms is {budget!r}, "
                          "expected a positive number of milliseconds, or null for no budget")
    return {"max_ndcg_drop": float(drop), "max_latency_p99_ms": None if budget is None else float(budget)}


def choose_candidate(teacher: dict[str, Any], candidates: list[dict[str, Any]], max_ndcg_drop: float,
                     max_latency_p99_ms: float | None, metric: str = "test_ndcg@10") -> dict[str, Any]:
    """Pick the model to ship from measured rows; a pure function of its arguments.

    Every row has `name`, `status` ("ok" or "failed"), `size_bytes`,
    `latency_p99_ms` and `metric`; failed rows have `error` instead of
    measurements. Returns the chosen name, the NDCG threshold, the reason, and
    one check per candidate saying why it qualified or not.
    """
    threshold = (1.0 - max_ndcg_drop) * teacher[metric]
    checks = [check_candidate(row, metric, threshold, max_latency_p99_ms) for row in candidates]
    passing = [row for row, check in zip(candidates, checks) if check["qualified"]]
    budget = "no latency budget" if max_latency_p99_ms is None else f"p99 <= {max_latency_p99_ms:g} ms"
    rule = f"{metric} >= (1 - {max_ndcg_drop:g}) x teacher {teacher[metric]:.4f} = {threshold:.4f} and {budget}"
    if passing:
        best = min(passing, key=lambda row: (row["size_bytes"], row["latency_p99_ms"], row["name"]))
        reason = (f"{best['name']} is the smallest qualifying candidate ({best['size_bytes']} bytes vs teacher "
                  f"{teacher['size_bytes']}; {metric} {best[metric]:.4f}); rule: {rule}")
        chosen = best["name"]
    else:
        reason = f"no candidate qualified, so the teacher ships; rule: {rule}"
        chosen = TEACHER
    return {"chosen": chosen, "metric": metric, "threshold": threshold, "rule": rule, "reason": reason,
            "checks": checks}


def check_candidate(row: dict[str, Any], metric: str, threshold: float, budget: float | None) -> dict[str, Any]:
    name = row["name"]
    if row.get("status") != "ok":
        return {"name": name, "qualified": False, "reason": f"failed: {row.get('error', 'unknown error')}"}
    if row[metric] < threshold:
        return {"name": name, "qualified": False,
                "reason": f"{metric} {row[metric]:.4f} is below the threshold {threshold:.4f}"}
    if budget is not None and row["latency_p99_ms"] > budget:
        return {"name": name, "qualified": False,
                "reason": f"p99 latency {row['latency_p99_ms']:.3f} ms is over the budget {budget:g} ms"}
    return {"name": name, "qualified": True, "reason": f"{metric} {row[metric]:.4f} >= {threshold:.4f}"}
