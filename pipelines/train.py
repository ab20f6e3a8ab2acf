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

from pipelines import augment, config, features
from pipelines.errors import ConfigError, DataError
from pipelines.io import write_json
from pipelines.model import build_model, model_config, save_bundle

log = logging.getLogger(__name__)

VALID_METRIC = "val_ndcg@10"
CHECKPOINT_ROOT = Path("checkpoints")
MODEL_FILE = "model.pt"
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
            items = self.model.item_vectors()
            user_vectors = self.model.user_vectors(users, history, items)
            negatives = self.augmenter.negatives(self.num_negatives, targets.device)
            candidates = torch.cat([targets, negatives])
            logits = user_vectors @ items[candidates].T
            # Another row's positive or a sampled item may equal this row's target: not a negative.
            collisions = candidates.unsqueeze(0) == targets.unsqueeze(1)
            collisions[:, : len(targets)].fill_diagonal_(False)
            logits = logits.masked_fill(collisions, float("-inf"))
            loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(targets), device=targets.device))
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


def build_report_callback(bundle_meta: dict[str, Any]):
    pl = _lightning()
    import ray.train

    class ReportCheckpointCallback(pl.Callback):
        """Report metrics to Ray Train each epoch with a checkpoint written by rank 0."""

        def __init__(self):
            self.history: list[dict[str, float]] = []
            self.epoch_started = 0.0

        def on_train_epoch_start(self, trainer, module):
            self.epoch_started = time.time()

        def on_train_epoch_end(self, trainer, module):
            metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
            metrics["epoch"] = trainer.current_epoch
            # Wall-clock bounds of the epoch (Unix seconds), for the start-up versus compute breakdown.
            metrics["epoch_started_at"] = self.epoch_started
            metrics["epoch_ended_at"] = time.time()
            self.history.append(metrics)
            with tempfile.TemporaryDirectory() as folder:
                folder = Path(folder)
                trainer.save_checkpoint(folder / "checkpoint.ckpt")
                checkpoint = None
                if trainer.global_rank == 0:
                    save_bundle(module.model, bundle_meta["config"], bundle_meta["item_ids"],
                                bundle_meta["user_ids"], folder / MODEL_FILE, extra={"epoch": trainer.current_epoch})
                    (folder / HISTORY_FILE).write_text(json.dumps(self.history), encoding="utf-8")
                    checkpoint = ray.train.Checkpoint.from_directory(str(folder))
                ray.train.report(metrics, checkpoint=checkpoint)

        def state_dict(self):
            return {"history": self.history}

        def load_state_dict(self, state_dict):
            self.history = list(state_dict.get("history", []))

    return ReportCheckpointCallback()


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
    train_loader = torch.utils.data.DataLoader(train_data, batch_size=int(hparams["batch_size"]), sampler=sampler)
    valid_loader = torch.utils.data.DataLoader(valid_data, batch_size=1024)

    module = build_module(loop_config["model_config"], arrays, hparams)
    callbacks = [build_report_callback(loop_config["bundle_meta"])]
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
        checkpoint_path = str(Path(checkpoint.to_directory()) / "checkpoint.ckpt")
    trainer.fit(module, train_loader, valid_loader, ckpt_path=checkpoint_path)


def worker_datasets(arrays: dict[str, np.ndarray], history_length: int):
    """Training examples (user, previous items, next item) and validation examples per user."""
    train_users, train_items = arrays["train_users"], arrays["train_items"]
    histories = features.history_windows(train_users, train_items, history_length)
    train_data = torch.utils.data.TensorDataset(
        torch.tensor(train_users), torch.tensor(histories), torch.tensor(train_items))
    latest = features.latest_histories(train_users, train_items, arrays["n_users"], history_length)
    valid_users = arrays["valid_users"]
    valid_data = torch.utils.data.TensorDataset(
        torch.tensor(valid_users), torch.tensor(latest[valid_users]),
        torch.tensor(arrays["valid_items"]))
    return train_data, valid_data


# ---------------------------------------------------------------- Ray driver


def ray_address(params: dict[str, Any]) -> str | None:
    return params.get("ray_address") or os.environ.get("RAY_ADDRESS") or None


def init_ray(params: dict[str, Any]) -> None:
    """Join the configured cluster, or start a local Ray instance that listens on 127.0.0.1 only."""
    address = ray_address(params)
    # Ship this workspace's `pipelines` package to every worker, so a cluster runs
    # the same stage code as the workspace whatever it has installed.
    runtime_env = {"py_modules": [str(Path(__file__).resolve().parent)]}
    if not address:
        # A single-node Ray binds and advertises loopback only when multi-node clusters are off.
        # Ray reads this when it is first imported, and its processes inherit it.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return
    workers_cpus = int(params["num_workers"]) * int(params["cpus_per_worker"])
    log.info("starting a local Ray instance on 127.0.0.1 with %d CPU(s)", workers_cpus)
    ray.init(num_cpus=workers_cpus, _node_ip_address="127.0.0.1", include_dashboard=False,
             runtime_env=runtime_env, log_to_driver=True, configure_logging=False)


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


def fit(params: dict[str, Any], data: dict[str, Any], storage: Path):
    """Run distributed training and return Ray Train's result."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    loop_config = loop_config_from(params, data)
    storage.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if params["use_gpu"] else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=int(params["num_workers"]),
            use_gpu=bool(params["use_gpu"]),
            resources_per_worker={"CPU": int(params["cpus_per_worker"])},
        ),
        run_config=RunConfig(
            name=run_name(loop_config),
            storage_path=str(storage.resolve()),
            failure_config=FailureConfig(max_failures=int(params.get("max_failures", 0))),
            checkpoint_config=CheckpointConfig(checkpoint_score_attribute=VALID_METRIC, checkpoint_score_order="max"),
        ),
    )
    return trainer.fit()


def export_best(result, target: Path) -> dict[str, Any]:
    """Copy the best epoch's model to `target` and return the per-epoch history of the run."""
    best = result.get_best_checkpoint(metric=VALID_METRIC, mode="max")
    if best is None:
        raise DataError("training finished without a checkpoint; check the worker logs above")
    with best.as_directory() as folder:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(folder) / MODEL_FILE, target)
    with result.checkpoint.as_directory() as folder:
        history = json.loads((Path(folder) / HISTORY_FILE).read_text(encoding="utf-8"))
    return {"history": history, "best_epoch": int(best_metrics(result).get("epoch", -1))}


def best_metrics(result) -> dict[str, Any]:
    scored = [(metrics.get(VALID_METRIC, float("-inf")), metrics) for _, metrics in result.best_checkpoints]
    return max(scored, key=lambda pair: pair[0])[1] if scored else {}


def timing_breakdown(marks: dict[str, float], history: list[dict[str, float]]) -> dict[str, float]:
    """Split the stage's wall time into data loading, Ray start, worker start-up, epoch compute and the rest.

    `marks` contains the Unix times `started`, `data_ready`, `ray_ready` and `fit_ended`.
    """
    epochs = [epoch for epoch in history if "epoch_started_at" in epoch]
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
        data_ready = time.time()
        init_ray(params)
        import ray

        ray_ready = time.time()
        try:
            result = fit(params, data, root / CHECKPOINT_ROOT)
        finally:
            fit_ended = time.time()
            ray.shutdown()
        if result.error:
            raise DataError(f"training failed: {result.error}")
        summary = export_best(result, root / config.CANDIDATE_DIR / MODEL_FILE)
        log_curves(summary["history"], root / "dvclive")
        timing = timing_breakdown({"started": started, "data_ready": data_ready, "ray_ready": ray_ready,
                                   "fit_ended": fit_ended}, summary["history"])
        write_json(timing, root / TIMING_REPORT)
        log.info("trained in %.1f s (data %.1f s, Ray start %.1f s, worker start %.1f s, %d epochs %.1f s); "
                 "best epoch %d; wrote %s", fit_ended - started, timing["data_seconds"],
                 timing["ray_start_seconds"], timing["worker_start_seconds"], timing["epochs"],
                 timing["epoch_compute_seconds"], summary["best_epoch"], config.CANDIDATE_DIR / MODEL_FILE)

    run_stage("train", stage)


if __name__ == "__main__":
    main()
