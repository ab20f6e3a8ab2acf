import pytest

from pipelines import policy
from pipelines.errors import ConfigError

TEACHER = {"name": "teacher", "status": "ok", "test_ndcg@10": 0.100, "size_bytes": 900_000, "latency_p99_ms": 2.0}
TABLE = [
    {"name": "prune_50", "status": "ok", "test_ndcg@10": 0.099, "size_bytes": 480_000, "latency_p99_ms": 2.1},
    {"name": "prune_80", "status": "ok", "test_ndcg@10": 0.090, "size_bytes": 240_000, "latency_p99_ms": 2.0},
    {"name": "int8", "status": "ok", "test_ndcg@10": 0.0995, "size_bytes": 230_000, "latency_p99_ms": 1.0},
    {"name": "int4", "status": "ok", "test_ndcg@10": 0.0985, "size_bytes": 150_000, "latency_p99_ms": 9.0},
    {"name": "student", "status": "failed", "error": "DataError: distillation failed"},
]


def test_smallest_qualifying_candidate_wins():
    decision = policy.choose_candidate(TEACHER, TABLE, max_ndcg_drop=0.02, max_latency_p99_ms=5.0)
    assert decision["chosen"] == "int8"
    assert decision["threshold"] == pytest.approx(0.098)
    checks = {check["name"]: check for check in decision["checks"]}
    assert checks["int4"]["qualified"] is False
    assert "over the budget 5 ms" in checks["int4"]["reason"]
    assert "below the threshold 0.0980" in checks["prune_80"]["reason"]
    assert checks["student"]["reason"] == "failed: DataError: distillation failed"
    assert "int8 is the smallest qualifying candidate" in decision["reason"]


def test_no_budget_lets_slow_small_candidate_win():
    assert policy.choose_candidate(TEACHER, TABLE, 0.02, None)["chosen"] == "int4"


def test_strict_drop_falls_back_to_teacher():
    decision = policy.choose_candidate(TEACHER, TABLE, max_ndcg_drop=0.001, max_latency_p99_ms=5.0)
    assert decision["chosen"] == "teacher"
    assert decision["reason"].startswith("no candidate qualified, so the teacher ships")


def test_size_tie_goes_to_lower_latency():
    table = [{**TABLE[2], "name": "slow", "latency_p99_ms": 3.0}, {**TABLE[2], "name": "fast"}]
    assert policy.choose_candidate(TEACHER, table, 0.02, None)["chosen"] == "fast"


def test_empty_table_ships_teacher():
    assert policy.choose_candidate(TEACHER, [], 0.02, 5.0)["chosen"] == "teacher"


@pytest.mark.parametrize("params, match", [
    ({"max_ndcg_drop": 1.0, "max_latency_p99_ms": 5}, r"compress\.policy\.max_ndcg_drop is 1\.0"),
    ({"max_ndcg_drop": -0.1, "max_latency_p99_ms": 5}, r"compress\.policy\.max_ndcg_drop is -0\.1"),
    ({"max_ndcg_drop": 0.02, "max_latency_p99_ms": 0}, r"compress\.policy\.max_latency_p99_ms is 0"),
    ({"max_ndcg_drop": 0.02, "max_latency_p99_ms": "fast"}, r"compress\.policy\.max_latency_p99_ms is 'fast'"),
])
def test_bad_policy_params_rejected(params, match):
    with pytest.raises(ConfigError, match=match):
        policy.check_policy(params)


def test_null_budget_accepted():
    assert policy.check_policy({"max_ndcg_drop": 0, "max_latency_p99_ms": None})["max_latency_p99_ms"] is None
