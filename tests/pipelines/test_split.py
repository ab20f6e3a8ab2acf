import numpy as np
import pandas as pd
import pytest

from pipelines import config, split
from pipelines.errors import ConfigError, DataError
from pipelines.io import write_json


@pytest.fixture(scope="module")
def loo(movielens_tables):
    return split.leave_one_out(movielens_tables["interactions"])


def test_leave_one_out_one_test_per_user(loo, movielens_tables):
    assert loo["test"]["user_id"].is_unique
    assert loo["valid"]["user_id"].is_unique
    total = sum(len(frame) for frame in loo.values())
    assert total == len(movielens_tables["interactions"])


def test_test_never_before_training(loo):
    last_train = loo["train"].groupby("user_id")["timestamp"].max()
    valid_time = loo["valid"].set_index("user_id")["timestamp"]
    test_time = loo["test"].set_index("user_id")["timestamp"]
    assert (test_time >= last_train.reindex(test_time.index)).all()
    assert (test_time >= valid_time.reindex(test_time.index)).all()
    assert (valid_time >= last_train.reindex(valid_time.index)).all()


def test_short_users_stay_in_train():
    frame = pd.DataFrame({
        "user_id": ["a", "a", "b", "b", "b"],
        "item_id": ["1", "2", "1", "2", "3"],
        "timestamp": [1, 2, 1, 2, 3],
        "rating": 1.0,
    })
    result = split.leave_one_out(frame)
    assert result["train"]["user_id"].tolist() == ["a", "a", "b"]
    assert result["test"]["item_id"].tolist() == ["3"]
    assert result["valid"]["item_id"].tolist() == ["2"]


def test_ties_follow_source_order():
    frame = pd.DataFrame({
        "user_id": ["u"] * 4,
        "item_id": ["9", "1", "5", "2"],
        "timestamp": [1, 2, 2, 2],
        "rating": 1.0,
    })
    first = split.leave_one_out(frame)
    second = split.leave_one_out(frame.copy())
    assert first["test"]["item_id"].tolist() == ["2"]
    assert first["valid"]["item_id"].tolist() == ["5"]
    assert second["test"].equals(first["test"])


def test_global_time_respects_cutoff(movielens_tables):
    interactions = movielens_tables["interactions"]
    result = split.global_time(interactions, 0.8, 0.9)
    test_start = result["test"]["timestamp"].min()
    valid_start = result["valid"]["timestamp"].min()
    assert result["train"]["timestamp"].max() < valid_start
    assert result["valid"]["timestamp"].max() < test_start
    assert test_start >= np.quantile(interactions["timestamp"], 0.9) - 1


def test_global_time_accepts_dates(movielens_tables):
    result = split.global_time(movielens_tables["interactions"], "1998-01-01", "1998-03-01")
    cutoff = pd.Timestamp("1998-03-01", tz="UTC").timestamp()
    assert result["train"]["timestamp"].max() < cutoff
    assert result["test"]["timestamp"].min() >= cutoff


@pytest.mark.parametrize("params, pattern", [
    ({"protocol": "random"}, r"split\.protocol is 'random', expected one of: leave_one_out, global_time"),
    ({"protocol": "global_time", "valid_cutoff": 1.5}, r"split\.valid_cutoff is 1\.5; a quantile must lie strictly between 0 and 1"),
    ({"protocol": "global_time", "valid_cutoff": 0.9, "test_cutoff": 0.5}, r"falls after split\.test_cutoff"),
    ({"protocol": "global_time", "valid_cutoff": "soon"}, r"split\.valid_cutoff is 'soon'"),
])
def test_bad_split_params(movielens_tables, params, pattern):
    with pytest.raises(ConfigError, match=pattern):
        split.split(movielens_tables["interactions"], params)


def test_split_refuses_rejected_data(tmp_path):
    write_json({"passed": False, "block_failures": ["interactions.rating_range"]}, tmp_path / config.VALIDATION_REPORT)
    with pytest.raises(DataError, match=r"validation\.json: the ingested data failed validation "
                                        r"\(interactions\.rating_range\)"):
        split.require_validated(tmp_path)


def test_split_accepts_validated_data(tmp_path):
    write_json({"passed": True, "block_failures": []}, tmp_path / config.VALIDATION_REPORT)
    split.require_validated(tmp_path)


@pytest.mark.parametrize("protocol", ["leave_one_out", "global_time"])
def test_coldstart_items_never_reach_training(movielens_tables, protocol):
    interactions = movielens_tables["interactions"]
    result = split.split_with_coldstart(interactions, {"protocol": protocol, "coldstart_items": 0.1,
                                                       "coldstart_seed": 3})
    held_out = set(result["coldstart"]["item_id"])
    assert len(held_out) == round(0.1 * interactions["item_id"].nunique())
    for name in ("train", "valid", "test"):
        assert held_out.isdisjoint(result[name]["item_id"]), name
    expected = interactions[interactions["item_id"].isin(held_out)]
    assert len(result["coldstart"]) == len(expected)
    assert sum(len(frame) for frame in result.values()) == len(interactions)


def test_coldstart_choice_follows_seed(movielens_tables):
    interactions = movielens_tables["interactions"]
    first, second, other = (split.split_with_coldstart(interactions, {"coldstart_items": 0.05, "coldstart_seed": seed})
                            for seed in (1, 1, 2))
    assert set(first["coldstart"]["item_id"]) == set(second["coldstart"]["item_id"])
    assert set(first["coldstart"]["item_id"]) != set(other["coldstart"]["item_id"])


def test_coldstart_off_keeps_split(movielens_tables):
    interactions = movielens_tables["interactions"]
    result = split.split_with_coldstart(interactions, {"coldstart_items": 0.0})
    assert result["coldstart"].empty
    for name, frame in split.leave_one_out(interactions).items():
        assert result[name].equals(frame), name


@pytest.mark.parametrize("share", [1.0, -0.1, "half", True])
def test_bad_coldstart_share_rejected(share):
    frame = pd.DataFrame({"user_id": ["u"], "item_id": ["1"], "timestamp": [1], "rating": 1.0})
    with pytest.raises(ConfigError, match=r"split\.coldstart_items is"):
        split.split_with_coldstart(frame, {"coldstart_items": share})
