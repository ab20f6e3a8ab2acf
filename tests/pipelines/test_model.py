import pytest
import torch

from pipelines.errors import RegistryError
from pipelines.model import TwoTower, load_bundle, save_bundle

CONFIG = {"n_items": 4, "n_users": 2, "embedding_dim": 8, "history_length": 3, "dropout": 0.0}


def small_model():
    torch.manual_seed(0)
    return TwoTower(4, 2, torch.tensor([[0], [1], [2], [1], [0]]), torch.tensor([0, 1, 1, 2, 0]), 8, 3, 0.0)


def test_scores_exclude_padding():
    scores = small_model()(torch.tensor([1, 2]), torch.tensor([[0, 1, 2], [0, 0, 0]]))
    assert scores.shape == (2, 5)
    assert torch.isinf(scores[:, 0]).all()
    assert torch.isfinite(scores[:, 1:]).all()


def test_bundle_round_trip(tmp_path):
    model = small_model()
    save_bundle(model, CONFIG, ["a", "b", "c", "d"], ["u", "v"], tmp_path / "model.pt")
    loaded, bundle = load_bundle(tmp_path / "model.pt")
    assert bundle["item_ids"] == ["a", "b", "c", "d"]
    users, history = torch.tensor([1]), torch.tensor([[1, 2, 3]])
    model.eval()
    assert torch.allclose(loaded(users, history), model(users, history))


def test_corrupt_bundle_rejected(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"not a model")
    with pytest.raises(RegistryError, match=r"model\.pt: cannot load model"):
        load_bundle(path)


def test_pickled_object_rejected(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"format_version": 1, "payload": object()}, path)
    with pytest.raises(RegistryError, match=r"cannot load model"):
        load_bundle(path)
