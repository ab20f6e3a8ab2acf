import pytest

from pipelines import gate
from pipelines.errors import ConfigError, DataError

PARAMS = {"metric": "test_ndcg@10", "min_lift_over_popularity": 0.1, "floors": {"test_coverage@10": 0.1},
          "champion": {"tolerance": 0.005, "require_improvement": False}, "slice_tolerance": {"default": 0.03},
          "min_slice_users": 50, "max_model_size_mb": 50, "max_latency_p95_ms": 50}


def results(candidate=0.10, production=None, difference=None, slice_values=None, size=1.0, latency=2.0):
    """Evaluation results as evaluate_candidate returns them, with only what the gate reads."""
    systems = {"model": {"test_ndcg@10": candidate, "test_coverage@10": 0.5},
               "popularity": {"test_ndcg@10": 0.045, "test_coverage@10": 0.05}}
    slices = {}
    for name, (users, model_value, production_value) in (slice_values or {}).items():
        slice_systems = {"model": {"test_ndcg@10": model_value}}
        if production is not None:
            slice_systems["production"] = {"test_ndcg@10": production_value}
        slices[name] = {"users": users, "systems": slice_systems}
    if production is not None:
        systems["production"] = {"test_ndcg@10": production}
    return {
        "systems": systems,
        "production_version": "v0001" if production is not None else None,
        "difference": {"test_ndcg@10": difference} if difference else {},
        "bootstrap": {"confidence": 0.95, "resamples": 1000, "seed": 0},
        "slices": slices,
        "efficiency": {"model": {"size_mb": size, "latency_p50_ms": latency / 2, "latency_p95_ms": latency,
                                 "requests": 200}},
    }


def by_name(decision, name):
    return next(check for check in decision["checks"] if check["name"] == name)


def test_first_run_skips_champion_check():
    decision = gate.decide(results(), PARAMS)
    check = by_name(decision, "test_ndcg@10 against production")
    assert decision["passed"] is True
    assert check["verdict"] == "skipped"
    assert check["note"] == "no production model yet: first promotion"


def test_champion_rejects_worse_candidate():
    difference = {"value": -0.02, "low": -0.03, "high": -0.01}
    decision = gate.decide(results(candidate=0.09, production=0.11, difference=difference), PARAMS)
    check = by_name(decision, "test_ndcg@10 against production")
    assert decision["passed"] is False
    assert (check["verdict"], check["value"], check["threshold"]) == ("fail", -0.02, -0.005)
    assert check["note"].startswith("significantly worse over production v0001")


def test_champion_accepts_better_candidate():
    difference = {"value": 0.02, "low": 0.01, "high": 0.03}
    decision = gate.decide(results(candidate=0.12, production=0.10, difference=difference), PARAMS)
    check = by_name(decision, "test_ndcg@10 against production")
    assert decision["passed"] is True
    assert check["verdict"] == "pass"
    assert check["note"].startswith("a significant improvement over production v0001")


def test_improvement_inside_noise_is_not_claimed():
    difference = {"value": 0.004, "low": -0.006, "high": 0.014}
    params = {**PARAMS, "champion": {"tolerance": 0.005, "require_improvement": True}}
    decision = gate.decide(results(candidate=0.104, production=0.10, difference=difference), params)
    assert by_name(decision, "test_ndcg@10 against production")["verdict"] == "pass"
    significant = by_name(decision, "test_ndcg@10 improvement is significant")
    assert (significant["verdict"], significant["value"]) == ("fail", -0.006)
    assert decision["passed"] is False


def test_popularity_lift_fails_weak_model():
    decision = gate.decide(results(candidate=0.048), PARAMS)
    check = by_name(decision, "test_ndcg@10 above popularity")
    assert check["threshold"] == pytest.approx(0.0495)
    assert check["verdict"] == "fail"
    assert decision["reasons"][0] == "test_ndcg@10 above popularity: fail, 0.0480 against threshold 0.0495"


def test_slice_regression_beyond_tolerance_fails():
    slice_values = {"users:new": (200, 0.05, 0.09), "users:active": (700, 0.12, 0.11), "items:cold": (3, 0.0, 0.5)}
    difference = {"value": 0.0, "low": -0.01, "high": 0.01}
    decision = gate.decide(results(production=0.10, difference=difference, slice_values=slice_values), PARAMS)
    assert by_name(decision, "test_ndcg@10 on users:new against production")["verdict"] == "fail"
    assert by_name(decision, "test_ndcg@10 on users:active against production")["verdict"] == "pass"
    cold = by_name(decision, "test_ndcg@10 on items:cold against production")
    assert (cold["verdict"], cold["note"]) == ("skipped", "3 test users, fewer than min_slice_users (50)")
    assert decision["passed"] is False


def test_slice_tolerance_per_slice():
    slice_values = {"users:new": (200, 0.05, 0.09)}
    difference = {"value": 0.0, "low": -0.01, "high": 0.01}
    params = {**PARAMS, "slice_tolerance": {"default": 0.03, "users:new": 0.05}}
    decision = gate.decide(results(production=0.10, difference=difference, slice_values=slice_values), params)
    assert by_name(decision, "test_ndcg@10 on users:new against production")["threshold"] == -0.05
    assert decision["passed"] is True


def test_budgets_judge_size_and_latency():
    decision = gate.decide(results(size=80.0, latency=75.0), PARAMS)
    assert by_name(decision, "model size")["verdict"] == "fail"
    assert by_name(decision, "top-10 latency")["verdict"] == "fail"


def test_floor_on_missing_metric_rejected():
    params = {**PARAMS, "floors": {"test_recall@5": 0.1}}
    with pytest.raises(DataError, match=r"candidate metrics have no 'test_recall@5' \(named by "
                                        r"evaluate\.gate\.floors\.test_recall@5\); available: test_coverage@10"):
        gate.decide(results(), params)


def test_gate_metric_missing_from_candidate_rejected():
    with pytest.raises(DataError, match=r"candidate metrics have no 'test_ndcg@5' \(named by evaluate\.gate\.metric\)"):
        gate.decide(results(), {**PARAMS, "metric": "test_ndcg@5"})


@pytest.mark.parametrize("key, value", [("max_model_size_mb", -1), ("min_lift_over_popularity", "a lot"),
                                        ("champion", {"tolerance": None})])
def test_bad_gate_params_rejected(key, value):
    with pytest.raises(ConfigError, match=r"params\.yaml: evaluate\.gate\.[a-z_.]+ is"):
        gate.decide(results(), {**PARAMS, key: value})
