import numpy as np
import pandas as pd
import pytest
import torch

from pipelines import coldstart, config
from pipelines.errors import ConfigError
from pipelines.model import TwoTower


def test_category_popularity_uses_known_items_only():
    # Items 1-2 in category 1, item 3 in category 2, item 4 (held out) in category 1, item 5 in 1 and 2.
    categories = np.array([[0, 0], [1, 0], [1, 0], [2, 0], [1, 0], [1, 2]])
    counts = np.array([0, 4, 2, 9, 100, 0], dtype=float)
    known = np.array([True, True, True, True, False, True])
    scores = coldstart.category_popularity(categories, counts, known)
    # Category 1: (4 + 2 + 0) / 3 known items; category 2: (9 + 0) / 2.
    assert scores.tolist() == pytest.approx([0.0, 2.0, 2.0, 4.5, 2.0, 4.5])


def test_popularity_ranking_breaks_ties_by_catalog_order():
    scores = np.array([0.0, 1.0, 3.0, 1.0, 3.0])
    ranking = coldstart.popularity_ranking(scores, 2, np.array([1, 2, 3, 4]), 3)
    assert ranking.tolist() == [[2, 4, 1], [2, 4, 1]]


def tiny_model():
    torch.manual_seed(0)
    return TwoTower(5, 2, torch.tensor([[0], [1], [1], [2], [2], [1]]), torch.zeros(6, dtype=torch.long), 8, 3, 0.0)


def test_model_ranking_returns_cold_items_only():
    cold = np.array([2, 5])
    ranking = coldstart.model_ranking(tiny_model(), np.array([1, 2]), np.zeros((3, 3), dtype=np.int64), cold, 10)
    assert ranking.shape == (2, 2)
    assert set(ranking.ravel()) == {2, 5}


def tables():
    train = pd.DataFrame({"user_id": ["u", "u", "v"], "item_id": ["a", "b", "a"], "timestamp": [1, 2, 3]})
    valid = pd.DataFrame({"user_id": ["v"], "item_id": ["c"], "timestamp": [4]})
    cold = pd.DataFrame({"user_id": ["u", "v", "v"], "item_id": ["e", "e", "d"], "timestamp": [5, 6, 7]})
    return {"train": train, "valid": valid, "coldstart": cold}


def test_report_covers_every_ranker():
    bundle = {"item_ids": ["a", "b", "c", "d", "e"], "user_ids": ["u", "v"]}
    model = tiny_model()
    result = coldstart.evaluate_coldstart({"images_on": model, "images_off": model}, bundle, tables(),
                                          model.item_categories.numpy(), 10)
    assert result["cold_items"] == 2
    assert result["users"] == 2
    assert set(result["rankers"]) == {"images_on", "images_off", "popularity"}
    # Both held-out items fit in the top 10, so every ranker finds every target.
    for values in result["rankers"].values():
        assert values["coldstart_recall@10"] == 1.0
    lift = coldstart.image_lift(result)
    assert lift["ratio"] == 1.0
    assert lift["passed"] is False


def test_image_lift_checks_ratio():
    result = {"k": 10, "rankers": {"images_on": {"coldstart_recall@10": 0.3},
                                   "images_off": {"coldstart_recall@10": 0.1}}}
    assert coldstart.image_lift(result)["passed"] is True
    assert coldstart.image_lift({"k": 10, "rankers": {"images_off": {}}}) is None


def test_report_off_without_held_out_items(workspace):
    folder = workspace / config.SPLIT_DIR
    folder.mkdir(parents=True)
    for name, frame in tables().items():
        (frame.iloc[:0] if name == "coldstart" else frame).to_parquet(folder / f"{name}.parquet")
    report = coldstart.coldstart(workspace, {"k": 10}, {})
    assert report["enabled"] is False
    assert "split.coldstart_items is 0" in report["reason"]


def test_bad_k_rejected(workspace):
    with pytest.raises(ConfigError, match=r"coldstart\.k is 0"):
        coldstart.coldstart(workspace, {"k": 0}, {})
