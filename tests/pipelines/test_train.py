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


def module_inputs(with_images):
    """Model config, catalog arrays and hparams of a 6-item catalog, with or without images."""
    import torch

    from pipelines import augment

    rng = np.random.default_rng(0)
    arrays = {"item_categories": np.array([[0], [1], [1], [2], [2], [1], [2]]), "item_year_buckets": np.zeros(7, np.int64),
              "seen_indptr": np.array([0, 0, 0]), "seen_indices": np.array([], np.int64),
              "item_images": rng.integers(1, 255, (7, 1, 16, 16)).astype(np.uint8) if with_images else None,
              "item_known": np.array([True, True, True, True, True, True, False]), "popularity": np.ones(7)}
    policy = augment.check_policy({"image_augmentation": {"rotation": {"p": 1.0, "degrees": 10}},
                                   "feature_augmentation": {"mask_items": {"enabled": True, "id": 0.5}}})
    hparams = {"num_negatives": 4, "learning_rate": 0.01, "weight_decay": 0.0, "augment": policy}
    config = {"n_items": 6, "n_users": 2, "embedding_dim": 8, "history_length": 3, "dropout": 0.0}
    batch = (torch.tensor([1, 2]), torch.tensor([[0, 1, 2], [0, 0, 3]]), torch.tensor([4, 5]))
    return config, arrays, hparams, batch


# Outside a Trainer, the training step's self.log warns and does nothing.
no_trainer = pytest.mark.filterwarnings("ignore:You are trying to `self.log")


@no_trainer
def test_training_step_trains_image_encoder():
    config, arrays, hparams, batch = module_inputs(with_images=True)
    module = train.build_module(config, arrays, hparams)
    assert module.model.image_encoder is not None
    loss = module.training_step(batch, 0)
    loss.backward()
    assert np.isfinite(loss.item())
    assert module.model.image_encoder.projection.weight.grad.abs().sum() > 0
    # The held-out item 6 is never a negative and its id embedding gets no gradient.
    assert module.model.item_embedding.weight.grad[6].abs().sum() == 0


@no_trainer
def test_training_step_without_images():
    config, arrays, hparams, batch = module_inputs(with_images=False)
    module = train.build_module(config, arrays, hparams)
    assert module.model.image_encoder is None
    assert np.isfinite(module.training_step(batch, 0).item())
