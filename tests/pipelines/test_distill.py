import pytest
import torch

from pipelines import cluster, distill, prune, train
from pipelines.errors import ConfigError
from pipelines.model import build_model, load_bundle
from tests.pipelines.conftest import TRAIN_PARAMS


@pytest.fixture(autouse=True)
def seeded_torch():
    """Seed torch's global generator, so every random tensor of a test is the same on each run."""
    torch.manual_seed(0)

SETTINGS = {"embedding_dim": 8, "epochs": 2, "learning_rate": 0.01, "batch_size": 64, "num_negatives": 64,
            "temperature": 2.0, "num_sampled": 128, "alpha": 0.5, "init": "random"}


def test_distillation_loss_zero_only_for_same_ranking():
    teacher = torch.randn(4, 20)
    assert float(distill.distillation_loss(teacher.clone(), teacher, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill.distillation_loss(torch.zeros(4, 20), teacher, 2.0)) > 0.01


def test_distillation_loss_pulls_student_to_teacher():
    teacher = torch.randn(4, 20)
    student = torch.zeros(4, 20, requires_grad=True)
    distill.distillation_loss(student, teacher, 1.0).backward()
    # Gradient descent raises the logits the teacher prefers.
    assert torch.all((-student.grad).argmax(dim=1) == teacher.argmax(dim=1))


@pytest.mark.parametrize("key, value, match", [
    ("embedding_dim", 32, r"compress\.distill\.embedding_dim is 32, but the student must be smaller than the "
                          r"teacher \(embedding dim 32\)"),
    ("embedding_dim", 0, r"compress\.distill\.embedding_dim is 0, expected a positive integer"),
    ("temperature", 0, r"compress\.distill\.temperature is 0, expected a positive number"),
    ("alpha", 1.5, r"compress\.distill\.alpha is 1\.5, expected a number in \[0, 1\]"),
    ("init", "zeros", r"compress\.distill\.init is 'zeros'"),
    ("num_negatives", -1, r"compress\.distill\.num_negatives is -1"),
])
def test_bad_settings_rejected(key, value, match):
    with pytest.raises(ConfigError, match=match):
        distill.check_settings({**SETTINGS, key: value}, teacher_dim=32)


def student_ndcg(model, arrays):
    _, valid_data = train.worker_datasets(arrays, model.history_length)
    return prune.validation_ndcg(model, valid_data, arrays)


def untrained_student(arrays, config):
    torch.manual_seed(0)
    return build_model(config, torch.tensor(arrays["item_categories"]), torch.tensor(arrays["item_year_buckets"]))


def test_teacher_init_starts_ahead(small_workspace):
    _, teacher, _, arrays = small_workspace
    config = train.model_config(small_workspace[2]["catalog"], {**TRAIN_PARAMS, "embedding_dim": 8,
                                                                "history_length": teacher.history_length})
    student = untrained_student(arrays, config)
    random_ndcg = student_ndcg(student, arrays)
    distill.init_from_teacher(student, teacher)
    assert student.item_embedding.weight.shape[1] == 8
    assert student_ndcg(student, arrays) > random_ndcg


def test_student_trains_through_ray(small_workspace, tmp_path):
    root, teacher, data, arrays = small_workspace
    bundle = torch.load(root / "models" / "candidate" / "model.pt", weights_only=True)
    target = tmp_path / "student.pt"
    cluster.init_ray(TRAIN_PARAMS)
    import ray

    try:
        summary = distill.distill(teacher, bundle, root / "models" / "candidate" / "model.pt", TRAIN_PARAMS,
                                  SETTINGS, data, tmp_path / "checkpoints", target)
    finally:
        ray.shutdown()
    student, student_bundle = load_bundle(target)
    assert student_bundle["config"]["embedding_dim"] == 8
    assert len(summary["history"]) == 2
    assert "train_distill_loss" in summary["history"][-1]
    untrained = untrained_student(arrays, student_bundle["config"])
    assert student_ndcg(student, arrays) > student_ndcg(untrained, arrays) + 0.02
    teacher_params = sum(p.numel() for p in teacher.parameters())
    assert sum(p.numel() for p in student.parameters()) < teacher_params / 3
