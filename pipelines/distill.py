"""Knowledge distillation: train a smaller two-tower student to rank items like the teacher.

The student is a TwoTower with a smaller embedding dim, and its user MLP
(3 x dim -> 2 x dim -> dim) shrinks with the dim. It trains through the train
stage's Ray Train and Lightning path (pipelines/train.py). Its loss adds a
soft-target term to the train stage's loss on the true next items. Each
batch's targets and `num_sampled` uniformly drawn items are scored by both
models, and the KL divergence pulls the student's softmax at temperature T
towards the teacher's. The term is scaled by T^2 so that its gradients keep
their size as T changes:

    loss = alpha x KL(teacher || student) x T^2 + (1 - alpha) x train loss

With `init: teacher_pca` the student's tables start as the teacher's,
projected on their top principal directions. On MovieLens-100K (dim 16 from
64, alpha 0.5, T 2) that start reached after one epoch the validation
NDCG@10 that a random start reached after three to five epochs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

from pipelines.errors import ConfigError, DataError
from pipelines.model import TwoTower, build_model

log = logging.getLogger(__name__)

MODULE_FACTORY = "pipelines.distill:build_distill_module"
# Keys of compress.distill that change the trained student; they name its Ray run.
SETTINGS = ("embedding_dim", "epochs", "learning_rate", "batch_size", "temperature", "alpha", "num_sampled",
            "num_negatives", "init")
INITS = ("teacher_pca", "random")


def check_settings(settings: dict[str, Any], teacher_dim: int, prefix: str = "compress.distill") -> dict[str, Any]:
    """Validate the distillation params against the teacher; errors name the param."""
    for key in ("embedding_dim", "epochs", "batch_size", "num_sampled"):
        value = settings.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"params.yaml: {prefix}.{key} is {value!r}, expected a positive integer")
    if settings["embedding_dim"] >= teacher_dim:
        raise ConfigError(f"params.yaml: {prefix}.embedding_dim is {settings['embedding_dim']}, but the student "
                          f"must be smaller than the teacher (embedding dim {teacher_dim})")
    checks = (("temperature", lambda v: v > 0, "a positive number"),
              ("learning_rate", lambda v: v > 0, "a positive number"),
              ("alpha", lambda v: 0 <= v <= 1, "a number in [0, 1]"))
    for key, valid, expected in checks:
        value = settings.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not valid(value):
            raise ConfigError(f"params.yaml: {prefix}.{key} is {value!r}, expected {expected}")
    if settings.get("init") not in INITS:
        raise ConfigError(f"params.yaml: {prefix}.init is {settings.get('init')!r}, expected one of {list(INITS)}")
    negatives = settings.get("num_negatives")
    if not isinstance(negatives, int) or isinstance(negatives, bool) or negatives < 0:
        raise ConfigError(f"params.yaml: {prefix}.num_negatives is {negatives!r}, expected an integer >= 0")
    return {key: settings[key] for key in SETTINGS}


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the softmaxes at `temperature`, averaged over rows and scaled by T^2."""
    student = torch.log_softmax(student_logits / temperature, dim=1)
    teacher = torch.log_softmax(teacher_logits / temperature, dim=1)
    return torch.nn.functional.kl_div(student, teacher, reduction="batchmean", log_target=True) * temperature ** 2


def teacher_from(payload: dict[str, Any]) -> TwoTower:
    state = payload["state_dict"]
    teacher = build_model(payload["config"], state["item_categories"], state["item_year_buckets"])
    teacher.load_state_dict(state)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def build_distill_module(loop_config: dict[str, Any]):
    """LightningModule of the student: the train stage's module with the soft-target loss added.

    Called in each Ray Train worker through `module_factory` (see train.make_module).
    """
    from pipelines import train

    settings = loop_config["distill"]
    base = train.build_module(loop_config["model_config"], loop_config["arrays"], loop_config["hparams"])
    teacher = teacher_from(loop_config["teacher"])
    with torch.no_grad():
        teacher_items = teacher.item_vectors()

    class DistillModule(type(base)):
        def training_step(self, batch, batch_index):
            hard = super().training_step(batch, batch_index)
            users, history, targets = batch
            sampled = torch.randint(1, self.model.n_items + 1, (int(settings["num_sampled"]),), device=targets.device)
            candidates = torch.cat([targets, sampled])
            with torch.no_grad():
                teacher_users = teacher.user_vectors(users, history, teacher_items)
                teacher_logits = teacher_users @ teacher_items[candidates].T
            items = self.model.item_vectors()
            student_logits = self.model.user_vectors(users, history, items) @ items[candidates].T
            soft = distillation_loss(student_logits, teacher_logits, float(settings["temperature"]))
            self.log("train_distill_loss", soft, on_step=False, on_epoch=True, sync_dist=True,
                     batch_size=len(targets))
            alpha = float(settings["alpha"])
            return alpha * soft + (1 - alpha) * hard

    module = DistillModule()
    if settings["init"] == "teacher_pca":
        init_from_teacher(module.model, teacher)
    return module


def top_directions(table: torch.Tensor, count: int) -> torch.Tensor:
    """Return the `count` top right singular vectors of a table (dim, count), its principal directions."""
    _, _, vh = torch.linalg.svd(table.detach().float(), full_matrices=False)
    return vh[:count].T


@torch.no_grad()
def init_from_teacher(student: TwoTower, teacher: TwoTower) -> None:
    """Start the student's tables as the teacher's, projected on their top principal directions.

    The item, category and year tables add up to the item vectors, so they
    share the directions of the teacher's item vectors. The user table uses
    its own directions, and the user MLP keeps its random start.
    """
    dim = student.item_embedding.embedding_dim
    item_directions = top_directions(teacher.item_vectors()[1:], dim)
    for name in ("item_embedding", "category_embedding", "year_embedding"):
        getattr(student, name).weight.copy_(getattr(teacher, name).weight @ item_directions)
    user_directions = top_directions(teacher.user_embedding.weight[1:], dim)
    student.user_embedding.weight.copy_(teacher.user_embedding.weight @ user_directions)


def student_params(train_params: dict[str, Any], settings: dict[str, Any], teacher_config: dict[str, Any]) -> dict:
    """Return the train params of the student's run: train's Ray and data settings with the student's sizes."""
    return {
        **train_params,
        "embedding_dim": int(settings["embedding_dim"]),
        "history_length": int(teacher_config["history_length"]),
        "epochs": int(settings["epochs"]),
        "learning_rate": float(settings["learning_rate"]),
        "batch_size": int(settings["batch_size"]),
        "num_negatives": int(settings["num_negatives"]),
        # Every epoch is checkpointed and the best by validation NDCG@10 is kept; no early stop.
        "patience": 0,
    }


def run_folder(storage: Path, settings: dict[str, Any], teacher_path: Path) -> Path:
    """Ray Train storage of this student: the train stage resumes a run whose name it finds there,
    so the folder is named after the settings and the teacher's bytes."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update(Path(teacher_path).read_bytes())
    return storage / f"distill-{digest.hexdigest()[:16]}"


def distill(teacher: TwoTower, teacher_bundle: dict[str, Any], teacher_path: Path, train_params: dict[str, Any],
            settings: dict[str, Any], data: dict[str, Any], storage: Path, target: Path) -> dict[str, Any]:
    """Train the student with Ray Train and save the best epoch to `target`; return its run summary.

    Ray must already be initialised (cluster.init_ray).
    """
    from pipelines import train

    params = student_params(train_params, settings, teacher_bundle["config"])
    train.check_params(params)
    extra = {
        "module_factory": MODULE_FACTORY,
        "distill": dict(settings),
        "teacher": {"config": teacher_bundle["config"],
                    "state_dict": {name: tensor.detach().clone() for name, tensor in teacher.state_dict().items()}},
    }
    result = train.fit(params, data, run_folder(storage, settings, teacher_path), extra)
    if result.error:
        raise DataError(f"distillation failed: {result.error}")
    summary = train.export_best(result, target)
    log.info("distilled a student with embedding dim %d; best epoch %d", settings["embedding_dim"],
             summary["best_epoch"])
    return summary
