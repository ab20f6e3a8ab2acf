import numpy as np
import pytest
import torch

from pipelines import features, prune, train
from pipelines.errors import ConfigError
from tests.pipelines.test_quantize import small_model


@pytest.fixture(autouse=True)
def seeded_torch():
    """Seed torch's global generator, so every random tensor of a test is the same on each run."""
    torch.manual_seed(0)


def test_per_tensor_masks_reach_sparsity_and_keep_largest():
    weights = {"a": torch.randn(40, 8), "b": torch.randn(100) * 5}
    masks = prune.magnitude_masks(weights, 0.75, "per_tensor")
    for name, weight in weights.items():
        assert int((~masks[name]).sum()) == round(0.75 * weight.numel())
        kept = weight.abs()[masks[name]]
        removed = weight.abs()[~masks[name]]
        assert kept.min() >= removed.max()


def test_global_masks_rank_by_relative_importance():
    weights = {"small": torch.linspace(-1, 1, 101), "large": torch.linspace(-100, 100, 101)}
    masks = prune.magnitude_masks(weights, 0.5, "global")
    assert sum(int((~mask).sum()) for mask in masks.values()) == round(0.5 * 202)
    # |w| / max|w| makes the two tensors equally important, whatever their scale.
    assert abs(int(masks["small"].sum()) - int(masks["large"].sum())) <= 2
    importance = torch.cat([prune.importance(weights["small"]), prune.importance(weights["large"])])
    kept = torch.cat([masks["small"], masks["large"]])
    assert importance[kept].min() >= importance[~kept].max()


def test_zero_sparsity_keeps_everything():
    masks = prune.magnitude_masks({"a": torch.randn(10)}, 0.0, "per_tensor")
    assert masks["a"].all()


@pytest.mark.parametrize("value", [1.0, 1.5, -0.1, "half", True, None])
def test_bad_sparsity_rejected(value):
    with pytest.raises(ConfigError, match=r"compress\.prune\.sparsities\[1\] is .*expected a sparsity in \[0, 1\)"):
        prune.check_sparsity(value, "compress.prune.sparsities[1]")


def test_bad_scope_rejected():
    with pytest.raises(ConfigError, match=r"compress\.prune\.scope is 'rows'"):
        prune.check_scope("rows", "compress.prune.scope")


def test_sparse_form_round_trips():
    tensor = torch.randn(37, 5)
    tensor[tensor.abs() < 0.7] = 0
    encoded = prune.encode_sparse(tensor)
    assert encoded["mask"].dtype == torch.uint8
    assert len(encoded["values"]) == int((tensor != 0).sum())
    assert torch.equal(prune.decode_sparse(encoded["mask"], encoded["values"], [37, 5]), tensor)


def test_damaged_sparse_form_rejected():
    encoded = prune.encode_sparse(torch.tensor([1.0, 0.0, 2.0]))
    with pytest.raises(ValueError, match="mask has 2 ones but 1 values"):
        prune.decode_sparse(encoded["mask"], encoded["values"][:1], [3])


def tiny_arrays(model, n_events=600, seed=0):
    """Training arrays like train.loop_config_from's, from random sequences of the model's users and items."""
    rng = np.random.default_rng(seed)
    n_users = model.user_embedding.num_embeddings - 1
    users = np.sort(rng.integers(1, n_users + 1, n_events))
    # Each user's next item is close to the previous one, so there is something to learn.
    items = (np.cumsum(rng.integers(1, 4, n_events)) % model.n_items) + 1
    ends = np.flatnonzero(np.r_[users[1:] != users[:-1], True])
    last = np.zeros(n_events, dtype=bool)
    last[ends] = True
    indptr, indices = features.seen_items(users[~last], items[~last], n_users)
    return {"n_users": n_users, "train_users": users[~last], "train_items": items[~last],
            "valid_users": users[last], "valid_items": items[last], "seen_indptr": indptr, "seen_indices": indices}


HPARAMS = {"seed": 0, "batch_size": 32, "num_negatives": 16, "weight_decay": 0.0, "learning_rate": 0.01}


def test_pruned_model_stays_pruned_after_fine_tune():
    model = small_model(n_items=60, n_users=12, dim=32)
    arrays = tiny_arrays(model)
    before = {name: weight.detach().clone() for name, weight in prune.prunable_weights(model).items()}
    result = prune.prune_model(model, 0.5, "per_tensor", arrays, HPARAMS, steps=15, eval_every=5)
    for name, row in result["sparsity"].items():
        assert row["sparsity"] == pytest.approx(0.5, abs=0.01), name
    assert [check["step"] for check in result["fine_tune"]] == [0, 5, 10, 15]
    for name, weight in prune.prunable_weights(model).items():
        important = prune.importance(before[name]) > torch.quantile(prune.importance(before[name]).flatten(), 0.5)
        # Every weight above the median importance survived: it is nonzero after the fine-tune.
        assert torch.all(weight[important] != 0), name


def test_fine_tune_keeps_best_validation_weights():
    model = small_model(n_items=60, n_users=12, dim=32)
    arrays = tiny_arrays(model)
    _, valid_data = train.worker_datasets(arrays, model.history_length)
    checks = prune.fine_tune(model, {}, arrays, HPARAMS, steps=20, eval_every=5)
    best = max(check["val_ndcg@10"] for check in checks)
    assert prune.validation_ndcg(model, valid_data, arrays) == pytest.approx(best)
