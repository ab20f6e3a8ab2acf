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


def image_model(known=None):
    torch.manual_seed(0)
    images = torch.randint(0, 255, (5, 1, 28, 28), dtype=torch.uint8)
    images[0] = 0
    return TwoTower(4, 2, torch.tensor([[0], [1], [2], [1], [0]]), torch.tensor([0, 1, 1, 2, 0]), 8, 3, 0.0,
                    item_images=images, item_known=known)


def test_image_encoder_used_with_images():
    model = image_model()
    assert model.image_encoder is not None
    # In training mode batch normalisation mixes the items of the batch, so compare in eval mode.
    model.eval()
    before = model.item_vectors().detach().clone()
    with torch.no_grad():
        model.item_images[2] = 255 - model.item_images[2]
    after = model.item_vectors().detach()
    assert not torch.allclose(before[2], after[2])
    assert torch.allclose(before[[1, 3, 4]], after[[1, 3, 4]])
    model.train()
    model.item_vectors().sum().backward()
    assert model.image_encoder.projection.weight.grad.abs().sum() > 0


def test_image_encoder_skipped_without_images():
    model = small_model()
    assert model.image_encoder is None
    assert not any(name.startswith("image_encoder") for name in model.state_dict())
    assert "item_images" not in model.state_dict()
    assert "item_known" not in model.state_dict()


def test_item_without_image_gets_no_image_features():
    model = image_model()
    with torch.no_grad():
        model.item_images[3] = 0
    assert model.image_vectors()[3].abs().sum() == 0
    assert model.image_vectors()[0].abs().sum() == 0
    assert model.image_vectors()[1].abs().sum() > 0


def test_cold_item_relies_on_content():
    model = image_model(known=torch.tensor([True, True, True, False, True]))
    before = model.item_vectors().detach().clone()
    with torch.no_grad():
        model.item_embedding.weight[3] += 1.0
        model.item_embedding.weight[2] += 1.0
    after = model.item_vectors().detach()
    assert torch.allclose(before[3], after[3])
    assert not torch.allclose(before[2], after[2])


def test_item_masking_only_in_training():
    model = image_model()
    model.item_masking = (1.0, 1.0)
    model.eval()
    unmasked = model.item_vectors().detach()
    model.train()
    masked = model.item_vectors().detach()
    assert torch.allclose(masked, model.image_vectors().detach() * (torch.arange(5) > 0).unsqueeze(1))
    assert not torch.allclose(masked, unmasked)


def test_image_bundle_round_trip(tmp_path):
    model = image_model(known=torch.tensor([True, True, False, True, True]))
    model.eval()
    save_bundle(model, CONFIG, ["a", "b", "c", "d"], ["u", "v"], tmp_path / "model.pt")
    loaded, bundle = load_bundle(tmp_path / "model.pt")
    assert bundle["state_dict"]["item_images"].dtype == torch.uint8
    assert loaded.image_encoder is not None
    assert loaded.item_known.tolist() == [True, True, False, True, True]
    users, history = torch.tensor([1]), torch.tensor([[1, 2, 3]])
    assert torch.allclose(loaded(users, history), model(users, history))
