"""Train stage: fit the two-tower model with Ray Train and PyTorch Lightning.

Run as `python -m pipelines.train` (the DVC stage `train`). The stage starts
a local Ray instance bound to 127.0.0.1, or joins the cluster that
`train.ray_address` or RAY_ADDRESS names. It runs `train.num_workers`
data-parallel workers with Lightning's DDP strategy through Ray, over gloo on
CPU and NCCL on GPU. Every epoch each worker reports its metrics and rank 0 writes a
checkpoint. The best epoch by validation NDCG@10 becomes
`models/candidate/model.pt`; per-epoch curves go to `dvclive/`.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipelines import augment, cluster, config, features
from pipelines.errors import ConfigError, DataError, TrainingError
from pipelines.io import write_json
from pipelines.model import build_model, model_config, save_bundle

log = logging.getLogger(__name__)

VALID_METRIC = "val_ndcg@10"
MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.ckpt"
# Ray Train's record of a run's checkpoints; it resumes from the latest one listed.
RAY_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
HISTORY_FILE = "history.json"
TIMING_REPORT = config.REPORTS_DIR / "train_timing.json"


# ---------------------------------------------------------------- data


def load_split_tables(root: Path) -> dict[str, pd.DataFrame]:
    tables = {}
    for folder, names in ((config.INGESTED_DIR, ("items", "users")), (config.SPLIT_DIR, config.SPLITS)):
        for name in names:
            path = root / folder / f"{name}.parquet"
            if not path.is_file():
                raise DataError(f"{path}: file not found; run the stages before train first")
            tables[name] = pd.read_parquet(path)
    return tables


def training_arrays(tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """Encode the splits into the compact arrays that travel to every worker."""
    catalog = features.build_catalog(tables["items"], tables["users"])
    train_users, train_items = features.encode(tables["train"], catalog, "train split")
    valid_users, valid_items = features.encode(tables["valid"], catalog, "valid split")
    return {
        "catalog": catalog,
        "train_users": train_users,
        "train_items": train_items,
        "valid_users": valid_users,
        "valid_items": valid_items,
    }


# ---------------------------------------------------------------- Lightning


def _lightning():
    import lightning.pytorch as pl

    return pl


def build_module(model_cfg: dict[str, Any], catalog_arrays: dict[str, np.ndarray], hparams: dict[str, Any]):
    """Create the LightningModule; defined in a function so importing this file stays cheap."""
    pl = _lightning()
    from pipelines.metrics import mask_seen, ndcg_at_k

    class RecommenderModule(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = build_model(model_cfg, torch.tensor(catalog_arrays["item_categories"]),
                                     torch.tensor(catalog_arrays["item_year_buckets"]),
                                     **augment.model_inputs(catalog_arrays))
            self.augmenter = augment.attach(self.model, catalog_arrays, hparams.get("augment"))
            self.num_negatives = int(hparams["num_negatives"])
            self.seen = (catalog_arrays["seen_indptr"], catalog_arrays["seen_indices"])
            self._valid_ndcg: list[torch.Tensor] = []

        def training_step(self, batch, batch_index):
            users, history, targets = batch
            history = self.augmenter.histories(history)
            negatives = self.augmenter.negatives(self.num_negatives, targets.device)
            loss = sampled_softmax_loss(self.model, users, history, targets, self.num_negatives, negatives)
            self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(targets))
            return loss

        def validation_step(self, batch, batch_index):
            users, history, targets = batch
            scores = self.model(users, history)
            mask_seen(scores, users.cpu().numpy(), *self.seen)
            top = torch.topk(scores, 10, dim=1).indices
            hits = (top == targets.unsqueeze(1)).cpu().numpy()
            self._valid_ndcg.append(torch.as_tensor(ndcg_at_k(hits, np.ones(len(targets), dtype=np.int64))))

        def on_validation_epoch_end(self):
            value = torch.cat(self._valid_ndcg).mean() if self._valid_ndcg else torch.tensor(0.0)
            self._valid_ndcg.clear()
            # Every rank scores every validation user, so the value is the same on all ranks.
            self.log(VALID_METRIC, value, sync_dist=False)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=float(hparams["learning_rate"]),
                                     weight_decay=float(hparams["weight_decay"]))

    return RecommenderModule()


def sampled_softmax_loss(model, users: torch.Tensor, history: torch.Tensor, targets: torch.Tensor,
                         num_negatives: int, negatives: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of each target against the batch's other targets and sampled items.

    `negatives` are the sampled items; by default `num_negatives` items drawn uniformly.
    """
    items = model.item_vectors()
    user_vectors = model.user_vectors(users, history, items)
    if negatives is None:
        negatives = torch.randint(1, model.n_items + 1, (num_negatives,), device=targets.device)
    candidates = torch.cat([targets, negatives])
    logits = user_vectors @ items[candidates].T
    # Another row's positive or a sampled item may equal this row's target: not a negative.
    collisions = candidates.unsqueeze(0) == targets.unsqueeze(1)
    collisions[:, : len(targets)].fill_diagonal_(False)
    logits = logits.masked_fill(collisions, float("-inf"))
    return torch.nn.functional.cross_entropy(logits, torch.arange(len(targets), device=targets.device))


def build_report_callback(bundle_meta: dict[str, Any], check_parameter_sync: bool = False):
    pl = _lightning()
    import ray.train

    class ReportCheckpointCallback(pl.Callback):
        """Report metrics to Ray Train each epoch with a checkpoint written by rank 0.

        The checkpoint is Lightning's (model, optimizer, loop state) plus this
        callback's state: the metrics history and the random number generator
        states, so a resumed run samples the same negatives as an unbroken one.
        """

        def __init__(self):
            self.history: list[dict[str, float]] = []
            self.epoch_started = 0.0
            self.worker_nodes: list[str] = []
            self.worker_peak_rss_mb: list[float] = []
            self.resumed_from_epoch: int | None = None

        def on_fit_start(self, trainer, module):
            node = ray.get_runtime_context().get_node_id()
            self.worker_nodes = gather_objects(trainer, node)

        def on_train_epoch_start(self, trainer, module):
            self.epoch_started = time.time()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_index):
            if check_parameter_sync and batch_index == 0:
                module.parameter_max_abs_diff = parameter_divergence(trainer, module)

        def on_train_epoch_end(self, trainer, module):
            metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
            metrics["epoch"] = trainer.current_epoch
            # Wall-clock bounds of the epoch (Unix seconds), for the start-up versus compute breakdown.
            metrics["epoch_started_at"] = self.epoch_started
            metrics["epoch_ended_at"] = time.time()
            if check_parameter_sync:
                metrics["parameter_max_abs_diff"] = float(getattr(module, "parameter_max_abs_diff", float("nan")))
            self.history.append(metrics)
            self.worker_peak_rss_mb = gather_objects(trainer, peak_rss_mb())
            with tempfile.TemporaryDirectory() as folder:
                folder = Path(folder)
                trainer.save_checkpoint(folder / CHECKPOINT_FILE)
                checkpoint = None
                if trainer.global_rank == 0:
                    save_bundle(module.model, bundle_meta["config"], bundle_meta["item_ids"],
                                bundle_meta["user_ids"], folder / MODEL_FILE, extra={"epoch": trainer.current_epoch})
                    run_info = {"history": self.history, "worker_nodes": self.worker_nodes,
                                "resumed_from_epoch": self.resumed_from_epoch,
                                "worker_peak_rss_mb": self.worker_peak_rss_mb}
                    (folder / HISTORY_FILE).write_text(json.dumps(run_info), encoding="utf-8")
                    checkpoint = ray.train.Checkpoint.from_directory(str(folder))
                ray.train.report(metrics, checkpoint=checkpoint)

        def state_dict(self):
            return {"history": self.history, "rng": random_states()}

        def load_state_dict(self, state_dict):
            self.history = list(state_dict.get("history", []))
            self.resumed_from_epoch = self.history[-1]["epoch"] if self.history else None
            if "rng" in state_dict:
                restore_random_states(state_dict["rng"])

    return ReportCheckpointCallback()


def gather_objects(trainer, value: Any) -> list[Any]:
    """Collect one picklable value from every rank, in rank order."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    values: list[Any] = [None] * trainer.world_size
    dist.all_gather_object(values, value)
    return values


def peak_rss_mb() -> float:
    """Return this process's peak resident memory in MiB (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parameter_divergence(trainer, module) -> float:
    """Return the largest absolute difference of any parameter between this rank and any other."""
    import torch.distributed as dist

    flat = torch.cat([parameter.detach().reshape(-1) for parameter in module.parameters()])
    if not (dist.is_available() and dist.is_initialized()):
        return 0.0
    copies = [torch.empty_like(flat) for _ in range(trainer.world_size)]
    dist.all_gather(copies, flat)
    return max(float((copy - flat).abs().max()) for copy in copies)


def random_states() -> dict[str, Any]:
    """Return the generator states as tensors and plain values, which Lightning loads with weights_only."""
    import random

    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": random.getstate(),
    }


def restore_random_states(states: dict[str, Any]) -> None:
    import random

    torch.set_rng_state(states["torch"])
    state = states["numpy"]
    np.random.set_state((state["name"], state["keys"].numpy().astype(np.uint32), state["position"],
                         state["has_gauss"], state["cached_gaussian"]))
    random.setstate(states["python"])


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Body of each Ray Train worker: build the data shard and fit with Lightning DDP."""
    pl = _lightning()
    import ray.train
    from lightning.pytorch.callbacks import EarlyStopping
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, prepare_trainer

    hparams = loop_config["hparams"]
    torch.set_num_threads(int(hparams["cpus_per_worker"]))
    pl.seed_everything(int(hparams["seed"]), workers=True, verbose=False)
    context = ray.train.get_context()
    arrays = loop_config["arrays"]

    train_data, valid_data = worker_datasets(arrays, int(hparams["history_length"]))
    sampler = torch.utils.data.distributed.DistributedSampler(
        train_data, num_replicas=context.get_world_size(), rank=context.get_world_rank(),
        shuffle=True, seed=int(hparams["seed"]))
    train_loader = torch.utils.data.DataLoader(train_data, batch_size=int(hparams["batch_size"]), sampler=sampler,
                                               collate_fn=collate_batch)
    valid_loader = torch.utils.data.DataLoader(valid_data, batch_size=1024)

    module = make_module(loop_config)
    callbacks = [build_report_callback(loop_config["bundle_meta"], bool(hparams.get("check_parameter_sync")))]
    if int(hparams.get("patience", 0)) > 0:
        callbacks.append(EarlyStopping(monitor=VALID_METRIC, mode="max", patience=int(hparams["patience"])))
    trainer = pl.Trainer(
        max_epochs=int(hparams["epochs"]),
        strategy=RayDDPStrategy(process_group_backend="nccl" if hparams["use_gpu"] else "gloo"),
        plugins=[RayLightningEnvironment()],
        accelerator="gpu" if hparams["use_gpu"] else "cpu",
        devices="auto",
        callbacks=callbacks,
        use_distributed_sampler=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        deterministic=True,
    )
    trainer = prepare_trainer(trainer)

    checkpoint_path = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        checkpoint_path = str(Path(checkpoint.to_directory()) / CHECKPOINT_FILE)
        log.info("resuming from checkpoint %s", checkpoint.path)
    trainer.fit(module, train_loader, valid_loader, ckpt_path=checkpoint_path)


class HistoryDataset(torch.utils.data.Dataset):
    """Training examples (user, previous items, next item), one per interaction.

    Histories are cut from the shared arrays one batch at a time, so each
    worker holds only read-only views of the arrays Ray passed to it.
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, user_first_rows: np.ndarray, length: int):
        self.users, self.items, self.first_rows, self.length = users, items, user_first_rows, length

    def __len__(self) -> int:
        return len(self.users)

    def __getitems__(self, indices: list[int]):
        rows = np.asarray(indices, dtype=np.int64)
        history = features.windows_at(self.items, self.first_rows, rows, self.length)
        return (torch.from_numpy(self.users[rows].astype(np.int64)), torch.from_numpy(history),
                torch.from_numpy(self.items[rows].astype(np.int64)))


def collate_batch(batch):
    """Pass through a batch that HistoryDataset.__getitems__ already assembled."""
    return batch


def make_module(loop_config: dict[str, Any]):
    """Build the worker's LightningModule; `loop_config["module_factory"]` ("package.module:function",
    called with the loop config) replaces the default, as distillation does."""
    factory = loop_config.get("module_factory")
    if not factory:
        return build_module(loop_config["model_config"], loop_config["arrays"], loop_config["hparams"])
    module_name, _, function = factory.partition(":")
    return getattr(importlib.import_module(module_name), function)(loop_config)


def worker_datasets(arrays: dict[str, np.ndarray], history_length: int):
    """Training examples (user, previous items, next item) and validation examples per user."""
    train_users, train_items = arrays["train_users"], arrays["train_items"]
    user_first_rows = arrays.get("train_first_rows")
    if user_first_rows is None:
        user_first_rows = features.first_rows(train_users)
    train_data = HistoryDataset(train_users, train_items, user_first_rows, history_length)
    latest = features.latest_histories(train_users, train_items, arrays["n_users"], history_length)
    valid_users = arrays["valid_users"]
    valid_data = torch.utils.data.TensorDataset(
        torch.tensor(valid_users), torch.tensor(latest[valid_users]),
        torch.tensor(arrays["valid_items"]))
    return train_data, valid_data


# ---------------------------------------------------------------- Ray driver


def run_name(loop_config: dict[str, Any]) -> str:
    """Name the Ray run after its inputs, so a rerun with the same inputs resumes and new inputs start fresh."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"hparams": loop_config["hparams"], "model": loop_config["model_config"]},
                             sort_keys=True).encode())
    for name in ("train_users", "train_items", "valid_users", "valid_items"):
        digest.update(np.ascontiguousarray(loop_config["arrays"][name]).tobytes())
    return f"train-{digest.hexdigest()[:16]}"


def loop_config_from(params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    catalog = data["catalog"]
    seen_indptr, seen_indices = features.seen_items(data["train_users"], data["train_items"], catalog.n_users)
    cfg = model_config(catalog, params)
    hparams = {key: params[key] for key in (
        "seed", "epochs", "batch_size", "learning_rate", "weight_decay", "num_negatives",
        "history_length", "cpus_per_worker", "use_gpu")}
    hparams["patience"] = int(params.get("patience", 0))
    hparams["check_parameter_sync"] = bool(params.get("check_parameter_sync", False))
    hparams["augment"] = data.get("augment_policy")
    return {
        "hparams": hparams,
        "model_config": cfg,
        "bundle_meta": {"config": cfg, "item_ids": catalog.item_ids, "user_ids": catalog.user_ids},
        "arrays": {
            "n_users": catalog.n_users,
            "item_categories": catalog.item_categories,
            "item_year_buckets": catalog.item_year_buckets,
            "train_users": data["train_users"],
            "train_items": data["train_items"],
            "valid_users": data["valid_users"],
            "valid_items": data["valid_items"],
            "train_first_rows": features.first_rows(data["train_users"]),
            "seen_indptr": seen_indptr,
            "seen_indices": seen_indices,
            **augment.worker_arrays(data),
        },
    }


def check_params(params: dict[str, Any]) -> None:
    for key in ("epochs", "batch_size", "num_workers", "cpus_per_worker", "embedding_dim", "history_length"):
        value = params.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"params.yaml: train.{key} is {value!r}, expected a positive integer")
    if not isinstance(params.get("num_negatives"), int) or params["num_negatives"] < 0:
        raise ConfigError(f"params.yaml: train.num_negatives is {params.get('num_negatives')!r}, "
                          "expected an integer >= 0")


BACKENDS = ("auto", "gloo", "nccl")


def backend(params: dict[str, Any]) -> str:
    """Return the collective backend: `train.backend`, where auto means NCCL on GPU and gloo on CPU."""
    value = params.get("backend", "auto")
    if value not in BACKENDS:
        raise ConfigError(f"params.yaml: train.backend is {value!r}, expected one of: {', '.join(BACKENDS)}")
    if value == "auto":
        return "nccl" if params["use_gpu"] else "gloo"
    return value


def check_latest_checkpoint(storage: str, name: str) -> None:
    """Load the checkpoint a resumed run would start from, so a damaged one fails before training."""
    folder = Path(storage) / name
    snapshot = folder / RAY_SNAPSHOT_FILE
    if "://" in storage or not snapshot.is_file():
        return
    try:
        latest_result = json.loads(snapshot.read_text(encoding="utf-8")).get("latest_checkpoint_result") or {}
    except ValueError as error:
        raise ConfigError(f"{snapshot} is damaged ({error}); set train.resume: false to start fresh") from error
    if not latest_result.get("checkpoint_dir_name"):
        return
    latest = folder / latest_result["checkpoint_dir_name"]
    try:
        torch.load(latest / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
        json.loads((latest / HISTORY_FILE).read_text(encoding="utf-8"))
    except Exception as error:  # any failure to read means the checkpoint cannot be resumed
        raise ConfigError(
            f"checkpoint {latest} is damaged ({type(error).__name__}: {error}); set train.resume: false "
            "to start fresh, or delete that folder to resume from the one before"
        ) from error


def fit(params: dict[str, Any], data: dict[str, Any], storage: str | Path, extra: dict[str, Any] | None = None):
    """Run distributed training and return Ray Train's result; `extra` adds keys to the workers' loop config.

    The run is named after its inputs, so with `train.resume` a rerun after a
    crash continues from the last checkpoint of the same inputs.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    storage = str(storage)
    loop_config = {**loop_config_from(params, data), **(extra or {})}
    name = run_name(loop_config)
    if params.get("resume", True):
        check_latest_checkpoint(storage, name)
    else:
        cluster.remove_run(storage, name)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend=backend(params)),
        scaling_config=ScalingConfig(
            num_workers=int(params["num_workers"]),
            use_gpu=bool(params["use_gpu"]),
            resources_per_worker={"CPU": int(params["cpus_per_worker"])},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=int(params.get("max_failures", 0))),
            checkpoint_config=CheckpointConfig(checkpoint_score_attribute=VALID_METRIC, checkpoint_score_order="max"),
        ),
    )
    try:
        return trainer.fit()
    except TrainingFailedError as error:
        raise TrainingError(
            f"training failed after {params.get('max_failures', 0)} restart(s) (train.max_failures): {error}"
        ) from error


def export_best(result, target: Path) -> dict[str, Any]:
    """Copy the best epoch's model to `target` and return the run's history, worker nodes and resume point."""
    best = result.get_best_checkpoint(metric=VALID_METRIC, mode="max")
    if best is None:
        raise DataError("training finished without a checkpoint; check the worker logs above")
    with best.as_directory() as folder:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(folder) / MODEL_FILE, target)
    with result.checkpoint.as_directory() as folder:
        run_info = json.loads((Path(folder) / HISTORY_FILE).read_text(encoding="utf-8"))
    return {**run_info, "best_epoch": int(best_metrics(result).get("epoch", -1))}


def best_metrics(result) -> dict[str, Any]:
    scored = [(metrics.get(VALID_METRIC, float("-inf")), metrics) for _, metrics in result.best_checkpoints]
    return max(scored, key=lambda pair: pair[0])[1] if scored else {}


def timing_breakdown(marks: dict[str, float], history: list[dict[str, float]]) -> dict[str, float]:
    """Split the stage's wall time into data loading, Ray start, worker start-up, epoch compute and the rest.

    `marks` contains the Unix times `started`, `data_ready`, `ray_ready` and `fit_ended`.
    """
    # A resumed run's history also lists the epochs of the run before the crash.
    epochs = [epoch for epoch in history if epoch.get("epoch_started_at", 0) >= marks["ray_ready"]]
    compute = sum(epoch["epoch_ended_at"] - epoch["epoch_started_at"] for epoch in epochs)
    first_epoch = epochs[0]["epoch_started_at"] if epochs else marks["fit_ended"]
    worker_start = first_epoch - marks["ray_ready"]
    return {
        "data_seconds": marks["data_ready"] - marks["started"],
        "ray_start_seconds": marks["ray_ready"] - marks["data_ready"],
        "worker_start_seconds": worker_start,
        "epoch_compute_seconds": compute,
        "epochs": len(epochs),
        "other_seconds": marks["fit_ended"] - marks["ray_ready"] - worker_start - compute,
        "total_seconds": marks["fit_ended"] - marks["started"],
    }


def log_curves(history: list[dict[str, float]], folder: Path) -> None:
    """Write per-epoch train loss and validation NDCG@10 with DVCLive."""
    from dvclive import Live

    with Live(dir=str(folder), save_dvc_exp=False, dvcyaml=None, report=None) as live:
        for epoch in history:
            for name in ("train_loss", VALID_METRIC):
                if name in epoch:
                    live.log_metric(name, epoch[name])
            live.next_step()


def main() -> None:
    from pipelines.cli import run_stage

    def stage() -> None:
        params = config.section(config.load_params(), "train")
        check_params(params)
        root = config.workspace()
        started = time.time()
        data = training_arrays(load_split_tables(root))
        data.update(augment.load_training_inputs(root, data["catalog"].item_ids))
        storage = cluster.resolve_storage(params.get("storage_path", "checkpoints"), root)
        cluster.check_storage_writable(storage)
        data_ready = time.time()
        cluster.init_ray(params)
        import ray

        ray_ready = time.time()
        try:
            cluster.check_resources(params)
            result = fit(params, data, storage)
        finally:
            fit_ended = time.time()
            ray.shutdown()
        if result.error:
            raise TrainingError(f"training failed: {result.error}")
        summary = export_best(result, root / config.CANDIDATE_DIR / MODEL_FILE)
        log_curves(summary["history"], root / "dvclive")
        timing = timing_breakdown({"started": started, "data_ready": data_ready, "ray_ready": ray_ready,
                                   "fit_ended": fit_ended}, summary["history"])
        timing["worker_nodes"] = summary.get("worker_nodes", [])
        timing["resumed_from_epoch"] = summary.get("resumed_from_epoch")
        timing["history"] = summary["history"]
        timing["worker_peak_rss_mb"] = summary.get("worker_peak_rss_mb", [])
        write_json(timing, root / TIMING_REPORT)
        log.info("trained in %.1f s (data %.1f s, Ray start %.1f s, worker start %.1f s, %d epochs %.1f s); "
                 "best epoch %d; wrote %s", fit_ended - started, timing["data_seconds"],
                 timing["ray_start_seconds"], timing["worker_start_seconds"], timing["epochs"],
                 timing["epoch_compute_seconds"], summary["best_epoch"], config.CANDIDATE_DIR / MODEL_FILE)

    run_stage("train", stage)


if __name__ == "__main__":
    main()
