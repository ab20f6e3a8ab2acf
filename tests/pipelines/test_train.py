import json

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
    users, history, target = train_data.__getitems__([2, 0])
    assert history.tolist() == [[4, 5], [0, 0]]
    assert target.tolist() == [6, 4]
    assert users.tolist() == [1, 1]
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


def test_damaged_checkpoint_named(tmp_path):
    checkpoint = tmp_path / "train-x" / "checkpoint_2026-01-01_00-00-00.000000"
    checkpoint.mkdir(parents=True)
    (checkpoint / train.CHECKPOINT_FILE).write_bytes(b"\x00garbage")
    (checkpoint / train.HISTORY_FILE).write_text("[]")
    snapshot = {"latest_checkpoint_result": {"checkpoint_dir_name": checkpoint.name}}
    (checkpoint.parent / train.RAY_SNAPSHOT_FILE).write_text(json.dumps(snapshot))
    with pytest.raises(ConfigError, match=r"checkpoint .*checkpoint_2026-01-01.* is damaged .*set train\.resume: false"):
        train.check_latest_checkpoint(str(tmp_path), "train-x")


def test_no_checkpoint_is_fine(tmp_path):
    train.check_latest_checkpoint(str(tmp_path), "train-missing")


@pytest.mark.parametrize("params, expected", [({"backend": "auto", "use_gpu": False}, "gloo"),
                                              ({"backend": "auto", "use_gpu": True}, "nccl"),
                                              ({"backend": "gloo", "use_gpu": True}, "gloo")])
def test_backend_choice(params, expected):
    assert train.backend(params) == expected


def test_unknown_backend_rejected():
    with pytest.raises(ConfigError, match=r"train\.backend is 'mpi', expected one of: auto, gloo, nccl"):
        train.backend({"backend": "mpi", "use_gpu": False})


def test_random_states_round_trip(tmp_path):
    import random

    import torch

    states = train.random_states()
    torch.save(states, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    train.restore_random_states(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
