import numpy as np
import pytest

from pipelines import train
from pipelines.errors import ConfigError

BASE = {"epochs": 1, "batch_size": 8, "num_workers": 1, "cpus_per_worker": 1, "embedding_dim": 8,
        "history_length": 3, "num_negatives": 4}


@pytest.mark.parametrize("key, value", [("epochs", 0), ("num_workers", "two"), ("batch_size", 1.5),
                                        ("num_negatives", -1), ("history_length", True)])
def test_bad_train_params_rejected(key, value):
    with pytest.raises(ConfigError, match=rf"train\.{key} is"):
        train.check_params({**BASE, key: value})


def test_worker_datasets_pair_history_with_next_item():
    arrays = {"train_users": np.array([1, 1, 1]), "train_items": np.array([4, 5, 6]), "n_users": 1,
              "valid_users": np.array([1]), "valid_items": np.array([7])}
    train_data, valid_data = train.worker_datasets(arrays, history_length=2)
    users, history, target = train_data[2]
    assert history.tolist() == [4, 5]
    assert int(target) == 6
    _, valid_history, valid_target = valid_data[0]
    assert valid_history.tolist() == [5, 6]
    assert int(valid_target) == 7


def test_run_name_changes_with_params():
    arrays = {name: np.arange(3) for name in ("train_users", "train_items", "valid_users", "valid_items")}
    base = {"hparams": {"epochs": 1}, "model_config": {"n_items": 3}, "arrays": arrays}
    changed = {**base, "hparams": {"epochs": 2}}
    assert train.run_name(base) == train.run_name({**base})
    assert train.run_name(base) != train.run_name(changed)


def test_timing_breakdown_adds_up():
    marks = {"started": 0.0, "data_ready": 1.0, "ray_ready": 6.0, "fit_ended": 30.0}
    history = [{"epoch_started_at": 16.0, "epoch_ended_at": 20.0}, {"epoch_started_at": 20.5, "epoch_ended_at": 25.0}]
    timing = train.timing_breakdown(marks, history)
    assert timing["ray_start_seconds"] == 5.0
    assert timing["worker_start_seconds"] == 10.0
    assert timing["epoch_compute_seconds"] == 8.5
    parts = ("data_seconds", "ray_start_seconds", "worker_start_seconds", "epoch_compute_seconds", "other_seconds")
    assert sum(timing[name] for name in parts) == timing["total_seconds"]
