import numpy as np
import pandas as pd
import pytest

from pipelines import evaluate
from pipelines.errors import ConfigError, DataError


def test_gate_requires_lift_over_popularity():
    results = {"model": {"test_ndcg@10": 0.05}, "popularity": {"test_ndcg@10": 0.043}}
    gate = evaluate.decide_gate(results, {"min_lift_over_popularity": 0.2}, 10)
    assert gate["passed"] is False
    assert gate["checks"][0]["threshold"] == pytest.approx(0.0516)
    results["model"]["test_ndcg@10"] = 0.06
    assert evaluate.decide_gate(results, {"min_lift_over_popularity": 0.2}, 10)["passed"] is True


@pytest.mark.parametrize("value", [0, -1, "ten", [10, 0], []])
def test_bad_cutoffs_rejected(value):
    with pytest.raises(ConfigError, match=r"evaluate\.k is"):
        evaluate.cutoffs({"k": value})


def test_cutoffs_sorted():
    assert evaluate.cutoffs({"k": [20, 10]}) == [10, 20]


def test_targets_grouped_per_user():
    test = pd.DataFrame({"user_id": ["v", "u", "v"], "item_id": ["b", "a", "c"]})
    users, indptr, indices = evaluate.test_targets(test, ["a", "b", "c"], ["u", "v"])
    assert users.tolist() == [1, 2]
    assert indptr.tolist() == [0, 1, 3]
    assert indices.tolist() == [1, 2, 3]


def test_targets_unknown_item_rejected():
    test = pd.DataFrame({"user_id": ["u"], "item_id": ["zzz"]})
    with pytest.raises(DataError, match=r"item 'zzz' is unknown to the model"):
        evaluate.test_targets(test, ["a"], ["u"])
