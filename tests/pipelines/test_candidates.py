import pytest
import torch

from pipelines import candidates, prune, quantize
from pipelines.errors import RegistryError
from pipelines.model import save_bundle
from tests.pipelines.test_quantize import inputs, small_model

N_ITEMS, N_USERS, DIM = 1000, 200, 64
CONFIG = {"n_items": N_ITEMS, "n_users": N_USERS, "embedding_dim": DIM, "history_length": 5, "dropout": 0.0}
BUNDLE = {"item_ids": [f"item-{i}" for i in range(N_ITEMS)], "user_ids": [f"user-{u}" for u in range(N_USERS)]}


@pytest.fixture()
def teacher(tmp_path):
    model = small_model(n_items=N_ITEMS, n_users=N_USERS, dim=DIM)
    path = tmp_path / "teacher.pt"
    save_bundle(model, CONFIG, BUNDLE["item_ids"], BUNDLE["user_ids"], path)
    return model, path


def test_sparse_candidate_round_trips_and_shrinks(tmp_path, teacher):
    model, teacher_path = teacher
    masks = prune.magnitude_masks({n: w.detach() for n, w in prune.prunable_weights(model).items()}, 0.5, "per_tensor")
    prune.apply_masks(model, masks)
    path = tmp_path / "prune_50.pt"
    candidates.save_sparse(model, CONFIG, BUNDLE, path, {"sparsity": 0.5})
    loaded, bundle = candidates.load_candidate(path, fast=False)
    users, history = inputs(model)
    with torch.no_grad():
        assert torch.equal(loaded(users, history), model(users, history))
        served, _ = candidates.load_candidate(path)
        assert isinstance(served, quantize.FoldedTwoTower)
        assert torch.allclose(served(users, history), model(users, history), atol=1e-5)
    assert bundle["item_ids"] == BUNDLE["item_ids"]
    assert bundle["recipe"] == {"sparsity": 0.5}
    assert teacher_path.stat().st_size / path.stat().st_size >= 1.6
    counts = candidates.parameter_counts(bundle)
    assert counts["nonzero"] == pytest.approx(counts["parameters"] / 2, rel=0.01)


@pytest.mark.parametrize("bits, min_ratio", [(8, 3.0), (4, 5.0)])
def test_quantized_candidate_loads_quantized(tmp_path, teacher, bits, min_ratio):
    model, teacher_path = teacher
    path = tmp_path / f"int{bits}.pt"
    candidates.save_quantized(model, bits, CONFIG, BUNDLE, path, {"bits": bits})
    loaded, bundle = candidates.load_candidate(path)
    assert isinstance(loaded, quantize.QuantizedTwoTower)
    assert loaded.item_table.bits == bits
    assert teacher_path.stat().st_size / path.stat().st_size >= min_ratio
    assert bundle["user_ids"] == BUNDLE["user_ids"]
    teacher_counts = candidates.parameter_counts(torch.load(teacher_path, weights_only=True))
    # Folding the category and year tables into the item vectors drops their rows.
    assert 0.9 * teacher_counts["parameters"] < candidates.parameter_counts(bundle)["parameters"]


def test_ids_with_newlines_stay_a_list():
    assert candidates.pack_ids(["a", "b"]) == "a\nb"
    assert candidates.unpack_ids(candidates.pack_ids(["a\nb", "c"])) == ["a\nb", "c"]
    assert candidates.unpack_ids(candidates.pack_ids([])) == []


def test_narrow_integers_picks_smallest_type():
    assert candidates.narrow_integers(torch.tensor([0, 200])).dtype == torch.uint8
    assert candidates.narrow_integers(torch.tensor([-1, 300])).dtype == torch.int16
    assert candidates.narrow_integers(torch.tensor([0.5])).dtype == torch.float32


def test_missing_candidate_rejected(tmp_path):
    with pytest.raises(RegistryError, match=r"int8\.pt: model file not found"):
        candidates.load_candidate(tmp_path / "int8.pt")


def test_corrupt_candidate_rejected(tmp_path):
    path = tmp_path / "int8.pt"
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(RegistryError, match=r"int8\.pt: cannot load model"):
        candidates.load_candidate(path)


def test_candidate_missing_tensor_rejected(tmp_path, teacher):
    model, _ = teacher
    path = tmp_path / "int8.pt"
    candidates.save_quantized(model, 8, CONFIG, BUNDLE, path, {})
    bundle = torch.load(path, weights_only=True)
    del bundle["tensors"]["items.scale"]
    torch.save(bundle, path)
    with pytest.raises(RegistryError, match=r"int8\.pt: damaged quantized model \(KeyError"):
        candidates.load_candidate(path)


def test_unknown_kind_rejected(tmp_path, teacher):
    model, _ = teacher
    path = tmp_path / "int8.pt"
    candidates.save_quantized(model, 8, CONFIG, BUNDLE, path, {})
    bundle = torch.load(path, weights_only=True)
    bundle["kind"] = "hashed"
    torch.save(bundle, path)
    with pytest.raises(RegistryError, match=r"unknown model kind 'hashed'"):
        candidates.load_candidate(path)
