"""The promotion gate: checks of an evaluated candidate against thresholds in `evaluate.gate`.

Every check reports its value, threshold, rule and verdict (pass, fail or
skipped, with a note saying why it was skipped). The candidate passes when no
check fails. The checks are:

- the gate metric beats the popularity baseline by `min_lift_over_popularity`;
- absolute floors on any metric (`floors`);
- champion-challenger: the candidate is not worse than the production model
  by more than `champion.tolerance` on the same test users, and, with
  `champion.require_improvement`, the bootstrap interval of the difference
  lies above zero;
- per slice, the gate metric does not drop against production by more than
  the slice's tolerance (slices with fewer than `min_slice_users` are shown,
  not judged);
- the model file size and the 95th percentile latency of one top-10 request.

When there is no production model yet, the champion-challenger and slice
checks are skipped with a note that explains why.
"""

from __future__ import annotations

from typing import Any

from pipelines.errors import ConfigError, DataError

DEFAULTS: dict[str, Any] = {
    "metric": "test_ndcg@10",
    "min_lift_over_popularity": 0.0,
    "floors": {},
    "champion": {"tolerance": 0.0, "require_improvement": False},
    "slice_tolerance": {"default": 0.02},
    "min_slice_users": 50,
    "max_model_size_mb": 100.0,
    "max_latency_p95_ms": 100.0,
}


def gate_params(params: dict[str, Any] | None) -> dict[str, Any]:
    """Validate `evaluate.gate` and fill in defaults."""
    values = {**DEFAULTS, **(params or {})}
    values["champion"] = {**DEFAULTS["champion"], **(values.get("champion") or {})}
    values["floors"] = values.get("floors") or {}
    tolerance = values["slice_tolerance"]
    values["slice_tolerance"] = tolerance if isinstance(tolerance, dict) else {"default": tolerance}
    numbers = {
        "min_lift_over_popularity": values["min_lift_over_popularity"],
        "champion.tolerance": values["champion"]["tolerance"],
        "max_model_size_mb": values["max_model_size_mb"],
        "max_latency_p95_ms": values["max_latency_p95_ms"],
        "min_slice_users": values["min_slice_users"],
        **{f"floors.{name}": floor for name, floor in values["floors"].items()},
        **{f"slice_tolerance.{name}": limit for name, limit in values["slice_tolerance"].items()},
    }
    for key, number in numbers.items():
        if not isinstance(number, (int, float)) or isinstance(number, bool) or number < 0:
            raise ConfigError(f"params.yaml: evaluate.gate.{key} is {number!r}, expected a non-negative number")
    if not isinstance(values["champion"]["require_improvement"], bool):
        raise ConfigError("params.yaml: evaluate.gate.champion.require_improvement is "
                          f"{values['champion']['require_improvement']!r}, expected true or false")
    return values


def candidate_metric(results: dict[str, Any], name: str, source: str) -> float:
    """Return the candidate's value of metric `name`; a metric it lacks is a DataError naming `source`."""
    candidate = results["systems"].get("model") or {}
    if name not in candidate:
        available = ", ".join(sorted(candidate)) or "none"
        raise DataError(f"candidate metrics have no '{name}' (named by {source}); available: {available}")
    return float(candidate[name])


def check(name: str, value: float | None, threshold: float | None, rule: str, passed: bool | None,
          note: str = "") -> dict[str, Any]:
    """Build one gate check. `passed=None` means skipped, which does not block promotion."""
    if passed is None:
        verdict = "skipped"
    else:
        verdict = "pass" if passed else "fail"
    return {"name": name, "value": value, "threshold": threshold, "rule": rule, "verdict": verdict,
            "passed": passed is not False, "note": note}


def popularity_check(results: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    metric, lift = params["metric"], float(params["min_lift_over_popularity"])
    value = candidate_metric(results, metric, "evaluate.gate.metric")
    baseline = results["systems"]["popularity"][metric]
    threshold = baseline * (1.0 + lift)
    return check(f"{metric} above popularity", value, threshold,
                 f"candidate {metric} > popularity {metric} ({baseline:.4f}) x (1 + {lift})", value > threshold)


def floor_checks(results: dict[str, Any], params: dict[str, Any]) -> list[dict[str, Any]]:
    checks = []
    for name, floor in params["floors"].items():
        value = candidate_metric(results, name, f"evaluate.gate.floors.{name}")
        checks.append(check(f"{name} floor", value, float(floor), f"candidate {name} >= {floor}", value >= floor))
    return checks


def champion_checks(results: dict[str, Any], params: dict[str, Any]) -> list[dict[str, Any]]:
    """Compare with the production model: not worse than the tolerance, and optionally a real improvement."""
    metric, tolerance = params["metric"], float(params["champion"]["tolerance"])
    name = f"{metric} against production"
    rule = f"candidate - production {metric} >= -{tolerance}"
    if results.get("production_version") is None:
        return [check(name, None, -tolerance, rule, None, "no production model yet: first promotion")]

    difference = results["difference"].get(metric)
    if difference is None:
        raise DataError(f"the difference to production has no '{metric}' (named by evaluate.gate.metric)")
    value, low, high = difference["value"], difference["low"], difference["high"]
    confidence = results["bootstrap"]["confidence"]
    interval = f"{confidence:.0%} interval of the difference [{low:+.4f}, {high:+.4f}]"
    significance = ("a significant improvement" if low > 0 else "significantly worse" if high < 0
                    else "no significant difference")
    checks = [check(name, value, -tolerance, rule, value >= -tolerance,
                    f"{significance} over production {results['production_version']}: {interval}")]
    if params["champion"]["require_improvement"]:
        checks.append(check(f"{metric} improvement is significant", low, 0.0,
                            "lower end of the interval of candidate - production > 0", low > 0, interval))
    return checks


def slice_checks(results: dict[str, Any], params: dict[str, Any]) -> list[dict[str, Any]]:
    """The gate metric of each slice must not drop against production by more than its tolerance."""
    metric, minimum_users = params["metric"], int(params["min_slice_users"])
    tolerances = params["slice_tolerance"]
    checks = []
    for name, slice_result in results["slices"].items():
        tolerance = float(tolerances.get(name, tolerances.get("default", 0.0)))
        title, rule = f"{metric} on {name} against production", f"candidate - production >= -{tolerance}"
        systems = slice_result["systems"]
        if "production" not in systems:
            checks.append(check(title, None, -tolerance, rule, None, "no production model yet: first promotion"))
        elif slice_result["users"] < minimum_users:
            checks.append(check(title, None, -tolerance, rule, None,
                                f"{slice_result['users']} test users, fewer than min_slice_users ({minimum_users})"))
        else:
            value = systems["model"][metric] - systems["production"][metric]
            checks.append(check(title, value, -tolerance, rule, value >= -tolerance,
                                f"candidate {systems['model'][metric]:.4f}, "
                                f"production {systems['production'][metric]:.4f}"))
    return checks


def budget_checks(results: dict[str, Any], params: dict[str, Any]) -> list[dict[str, Any]]:
    efficiency = results["efficiency"]["model"]
    size, latency = efficiency["size_mb"], efficiency["latency_p95_ms"]
    size_limit, latency_limit = float(params["max_model_size_mb"]), float(params["max_latency_p95_ms"])
    return [
        check("model size", size, size_limit, f"model file <= {size_limit} MB", size <= size_limit),
        check("top-10 latency", latency, latency_limit,
              f"95th percentile of one user's top-10 request <= {latency_limit} ms", latency <= latency_limit,
              f"median {efficiency['latency_p50_ms']:.2f} ms over {efficiency['requests']} requests"),
    ]


def reason(entry: dict[str, Any]) -> str:
    """Explain a check's verdict in one line."""
    if entry["verdict"] == "skipped":
        return f"{entry['name']}: skipped ({entry['note']})"
    text = f"{entry['name']}: {entry['verdict']}, {entry['value']:.4f} against threshold {entry['threshold']:.4f}"
    return f"{text} ({entry['note']})" if entry["note"] else text


def decide(results: dict[str, Any], params: dict[str, Any] | None) -> dict[str, Any]:
    """Run every check on evaluation `results` and return the gate decision."""
    params = gate_params(params)
    checks = [popularity_check(results, params), *floor_checks(results, params),
              *champion_checks(results, params), *slice_checks(results, params), *budget_checks(results, params)]
    return {
        "passed": all(entry["passed"] for entry in checks),
        "metric": params["metric"],
        "production_version": results.get("production_version"),
        "checks": checks,
        "reasons": [reason(entry) for entry in checks],
    }
