"""Coldstart stage: measure how well the model recommends products that have no interactions yet.

Run as `python -m pipelines.coldstart` (the DVC stage `coldstart`, after
train). The split stage held out a share `split.coldstart_items` of the
products, and none of their interactions reached training; here they are the
test set. Every user who interacted with a held-out product gets a ranking of
all held-out products (a "new arrivals" shelf), from the user's training and
validation history, by three rankers:

- `images_on`: the candidate model, which reads product images when the
  catalog has them;
- `images_off`: the same model trained without images, here and in-process,
  with the train params, the candidate's number of epochs and the same global
  batch size (`train.batch_size` x `train.num_workers`). When the catalog has
  no images the candidate is this model and nothing is trained;
- `popularity`: held-out products have no interactions, so this baseline ranks
  them by the mean training popularity of the products in their category.

Writes `reports/coldstart.json` with each ranker's Recall, NDCG, MRR, hit rate
and coverage at `coldstart.k`, and the ratio of images-on to images-off
Recall@K.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipelines import augment, config, features, metrics
from pipelines.errors import ConfigError, DataError
from pipelines.io import write_json
from pipelines.model import TwoTower, load_bundle
from pipelines.scoring import user_state

log = logging.getLogger(__name__)

COLDSTART_REPORT = config.REPORTS_DIR / "coldstart.json"
# The lift of images on over images off that the report checks for.
MIN_IMAGE_LIFT = 2.0


def cold_targets(coldstart: pd.DataFrame, item_ids: list[str], user_ids: list[str]):
    """Users (indices) with held-out interactions and their held-out items as CSR arrays."""
    catalog = features.Catalog(item_ids, user_ids, [], np.zeros((len(item_ids) + 1, 1), np.int64),
                               np.zeros(len(item_ids) + 1, np.int64))
    users, items = features.encode(coldstart, catalog, "coldstart split")
    pairs = pd.DataFrame({"user": users, "item": items}).drop_duplicates().sort_values(["user", "item"])
    test_users, counts = np.unique(pairs["user"].to_numpy(), return_counts=True)
    return test_users, np.r_[0, np.cumsum(counts)], pairs["item"].to_numpy()


@torch.no_grad()
def model_ranking(model: TwoTower, users: np.ndarray, histories: np.ndarray, cold_items: np.ndarray, k: int,
                  batch_size: int = 1024) -> np.ndarray:
    """Top-k of the cold items (item indices) for each user by the model's scores."""
    model.eval()
    k = min(k, len(cold_items))
    rankings = []
    for start in range(0, len(users), batch_size):
        batch = users[start:start + batch_size]
        scores = model(torch.from_numpy(batch), torch.from_numpy(histories[batch]))[:, torch.from_numpy(cold_items)]
        rankings.append(cold_items[torch.topk(scores, k, dim=1).indices.numpy()])
    return np.concatenate(rankings) if rankings else np.zeros((0, k), dtype=np.int64)


def category_popularity(item_categories: np.ndarray, counts: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Score each item by the highest mean training count of the known items in one of its categories."""
    n_categories = int(item_categories.max(initial=0)) + 1
    totals = np.zeros(n_categories)
    members = np.zeros(n_categories)
    for column in item_categories.T:
        present = (column > 0) & known
        np.add.at(totals, column[present], counts[present])
        np.add.at(members, column[present], 1)
    means = np.divide(totals, members, out=np.zeros(n_categories), where=members > 0)
    means[0] = 0.0
    return means[item_categories].max(axis=1)


def popularity_ranking(scores: np.ndarray, n_users: int, cold_items: np.ndarray, k: int) -> np.ndarray:
    """Rank the cold items by score into one top-k shared by all users; ties keep catalog order."""
    order = cold_items[np.argsort(-scores[cold_items], kind="stable")][:min(k, len(cold_items))]
    return np.tile(order, (n_users, 1))


def summarise(top: np.ndarray, indptr: np.ndarray, indices: np.ndarray, n_cold: int, k: int) -> dict[str, float]:
    """Metrics at k named `coldstart_<metric>@k`; with fewer than k cold items the lists are padded with index 0."""
    padded = np.zeros((len(top), k), dtype=np.int64)
    padded[:, :top.shape[1]] = top
    values = metrics.summary(padded, indptr, indices, n_cold, "coldstart")
    values[f"coldstart_coverage@{k}"] = len(np.setdiff1d(np.unique(top), [0])) / n_cold if n_cold else 0.0
    return values


def evaluate_coldstart(models: dict[str, TwoTower], bundle: dict[str, Any], tables: dict[str, pd.DataFrame],
                       item_categories: np.ndarray, k: int) -> dict[str, Any]:
    """Rank the held-out products for their users with each model and the category-popularity baseline."""
    item_ids, user_ids = bundle["item_ids"], bundle["user_ids"]
    index = {item_id: row for row, item_id in enumerate(item_ids, start=1)}
    cold = np.zeros(len(item_ids) + 1, dtype=bool)
    cold[tables["coldstart"]["item_id"].astype(str).map(index).dropna().astype(int).to_numpy()] = True
    cold_items = np.flatnonzero(cold)
    users, indptr, indices = cold_targets(tables["coldstart"], item_ids, user_ids)
    history_length = next(iter(models.values())).history_length
    state = user_state([tables["train"], tables["valid"]], item_ids, user_ids, history_length)

    results: dict[str, Any] = {}
    for name, model in models.items():
        results[name] = summarise(model_ranking(model, users, state["histories"], cold_items, k),
                                  indptr, indices, len(cold_items), k)
    counts = np.bincount(state["seen_indices"], minlength=len(item_ids) + 1).astype(np.float64)
    scores = category_popularity(item_categories, counts, ~cold)
    results["popularity"] = summarise(popularity_ranking(scores, len(users), cold_items, k),
                                      indptr, indices, len(cold_items), k)
    return {"cold_items": int(len(cold_items)), "users": int(len(users)),
            "interactions": int(len(tables["coldstart"])), "k": k, "rankers": results}


def image_lift(result: dict[str, Any]) -> dict[str, Any] | None:
    """Check that images-on Recall@K reaches MIN_IMAGE_LIFT x images-off; return None without images."""
    rankers = result["rankers"]
    if "images_on" not in rankers:
        return None
    metric = f"coldstart_recall@{result['k']}"
    on, off = rankers["images_on"][metric], rankers["images_off"][metric]
    return {"metric": metric, "images_on": on, "images_off": off,
            "ratio": on / off if off > 0 else None,
            "threshold": MIN_IMAGE_LIFT, "passed": bool(on >= MIN_IMAGE_LIFT * off and on > 0)}


# ---------------------------------------------------------------- images-off twin


def train_in_process(root: Path, params: dict[str, Any], epochs: int, with_images: bool = False,
                     policy: dict[str, Any] | None = None) -> TwoTower:
    """Train the candidate's architecture in this process, as train would; without images unless asked.

    `policy` replaces the augmentation policy of data/augment, for experiments.
    """
    import lightning.pytorch as pl

    from pipelines import train

    data = train.training_arrays(train.load_split_tables(root))
    data.update(augment.load_training_inputs(root, data["catalog"].item_ids))
    if not with_images:
        data["item_images"] = None
    if policy is not None:
        data["augment_policy"] = policy
    loop_config = train.loop_config_from(params, data)
    hparams = loop_config["hparams"]
    pl.seed_everything(int(hparams["seed"]), verbose=False)
    train_data, _ = train.worker_datasets(loop_config["arrays"], int(hparams["history_length"]))
    loader = torch.utils.data.DataLoader(
        train_data, batch_size=int(hparams["batch_size"]) * int(params["num_workers"]), shuffle=True,
        generator=torch.Generator().manual_seed(int(hparams["seed"])), collate_fn=train.collate_batch)
    module = train.build_module(loop_config["model_config"], loop_config["arrays"], hparams)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, limit_val_batches=0,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         deterministic=True)
    trainer.fit(module, loader)
    return module.model.eval()


def candidate_epochs(bundle: dict[str, Any], params: dict[str, Any]) -> int:
    """Return the epochs the candidate trained up to its saved checkpoint, or train.epochs when the bundle lacks them."""
    epoch = (bundle.get("extra") or {}).get("epoch")
    return int(epoch) + 1 if isinstance(epoch, int) and epoch >= 0 else int(params["epochs"])


def read_tables(root: Path) -> dict[str, pd.DataFrame]:
    tables = {}
    for name in ("train", "valid", "coldstart"):
        path = root / config.SPLIT_DIR / f"{name}.parquet"
        if not path.is_file():
            raise DataError(f"{path}: file not found; run the split stage first")
        tables[name] = pd.read_parquet(path)
    return tables


def coldstart(root: Path, params: dict[str, Any], train_params: dict[str, Any]) -> dict[str, Any]:
    """Build the cold-start report: the rankers' metrics on held-out products and the image lift."""
    k = params.get("k", 10)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"params.yaml: coldstart.k is {k!r}, expected a positive integer")
    tables = read_tables(root)
    if tables["coldstart"].empty:
        return {"enabled": False, "reason": "split.coldstart_items is 0, so no product is held out of training"}

    candidate, bundle = load_bundle(root / config.CANDIDATE_DIR / "model.pt")
    models = {"images_off": candidate}
    if candidate.image_encoder is not None:
        epochs = candidate_epochs(bundle, train_params)
        log.info("training the images-off model for %d epoch(s) to compare with the candidate", epochs)
        models = {"images_on": candidate, "images_off": train_in_process(root, train_params, epochs)}
    else:
        log.info("the candidate has no image path (the catalog has no images): reporting it as images off")
    result = evaluate_coldstart(models, bundle, tables, candidate.item_categories.numpy(), k)
    return {"enabled": True, **result, "image_lift": image_lift(result)}


def main() -> None:
    from pipelines.cli import run_stage

    def stage() -> None:
        all_params = config.load_params()
        root = config.workspace()
        report = coldstart(root, config.section(all_params, "coldstart"), config.section(all_params, "train"))
        write_json(report, root / COLDSTART_REPORT)
        if not report["enabled"]:
            log.info("cold-start report off: %s", report["reason"])
            return
        for name, values in report["rankers"].items():
            log.info("%s: %s", name, ", ".join(f"{key}={value:.4f}" for key, value in values.items()))
        if report["image_lift"] is not None:
            lift = report["image_lift"]
            log.info("images on / off %s: %.2f (check: at least %.1f, %s)", lift["metric"], lift["ratio"],
                     lift["threshold"], "passed" if lift["passed"] else "FAILED")

    run_stage("coldstart", stage)


if __name__ == "__main__":
    main()
