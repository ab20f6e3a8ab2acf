"""Small synthetic data sets and saved models for the evaluate, promote and registry tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipelines import config, features, promote, registry, split
from pipelines.io import write_json
from pipelines.model import build_model, save_bundle

PROMOTE_PARAMS = {"force": False, "recommendations_k": 3}


def synthetic_tables(n_users: int = 300, n_items: int = 60, per_user: int = 8, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Interactions drawn with Zipf-like item popularity, split leave-one-out, plus items and users."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_items + 1)
    rows = []
    for user in range(n_users):
        items = rng.choice(n_items, size=per_user, replace=False, p=weights / weights.sum())
        rows += [(f"u{user}", f"i{item}", step) for step, item in enumerate(items)]
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).assign(rating=1.0)
    tables = split.leave_one_out(interactions, 3)
    tables["interactions"] = interactions
    tables["items"] = pd.DataFrame({"item_id": [f"i{item}" for item in range(n_items)],
                                    "title": [f"Item {item}" for item in range(n_items)], "categories": "",
                                    "release_year": pd.array([None] * n_items, dtype="Int64"), "image_path": None})
    tables["users"] = pd.DataFrame({"user_id": [f"u{user}" for user in range(n_users)]})
    return tables


def model_config(catalog: features.Catalog) -> dict:
    return {"n_items": catalog.n_items, "n_users": catalog.n_users, "embedding_dim": 4, "history_length": 3,
            "dropout": 0.0}


def save_model(tables: dict[str, pd.DataFrame], path: Path, seed: int = 0, popular: bool = False) -> Path:
    """Save an untrained two-tower model for the tables' catalog.

    With `popular`, the weights are set so that every user's scores are the
    log of each item's training count: a most-popular ranker, which beats a
    random model on Zipf-distributed data.
    """
    catalog = features.build_catalog(tables["items"], tables["users"])
    settings = model_config(catalog)
    torch.manual_seed(seed)
    model = build_model(settings, torch.tensor(catalog.item_categories), torch.tensor(catalog.item_year_buckets))
    if popular:
        counts = tables["train"]["item_id"].value_counts()
        popularity = torch.tensor([0.0] + [float(np.log1p(counts.get(item_id, 0))) for item_id in catalog.item_ids])
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.zero_()
            model.item_embedding.weight[:, 0] = popularity
            model.user_mlp[-1].bias[0] = 1.0
    save_bundle(model, settings, catalog.item_ids, catalog.user_ids, path)
    return path


def build_candidate_workspace(workspace: Path) -> Path:
    """Fill `workspace` with tiny ingested tables, an untrained candidate model and its evaluation."""
    interactions = pd.DataFrame({
        "user_id": ["u1", "u1", "u2", "u2", "u2"],
        "item_id": ["a", "b", "a", "c", "d"],
        "timestamp": [1, 2, 1, 2, 3],
        "rating": 1.0,
    })
    items = pd.DataFrame({"item_id": ["a", "b", "c", "d"], "title": ["Apple", "Bag", "Cap", "Dress"],
                          "categories": ["food", "bags", "hats", "clothes"],
                          "release_year": pd.array([None] * 4, dtype="Int64"), "image_path": None})
    users = pd.DataFrame({"user_id": ["u1", "u2"]})
    folder = workspace / config.INGESTED_DIR
    folder.mkdir(parents=True)
    for name, frame in (("interactions", interactions), ("items", items), ("users", users)):
        frame.to_parquet(folder / f"{name}.parquet")
    save_candidate(workspace, seed=0)
    set_evaluation(workspace, passed=True)
    return workspace


def save_candidate(root: Path, seed: int) -> None:
    items = pd.read_parquet(root / config.INGESTED_DIR / "items.parquet")
    users = pd.read_parquet(root / config.INGESTED_DIR / "users.parquet")
    catalog = features.build_catalog(items, users)
    model_cfg = {"n_items": 4, "n_users": 2, "embedding_dim": 8, "history_length": 3, "dropout": 0.0}
    torch.manual_seed(seed)
    model = build_model(model_cfg, torch.tensor(catalog.item_categories), torch.tensor(catalog.item_year_buckets))
    save_bundle(model, model_cfg, catalog.item_ids, catalog.user_ids, root / config.CANDIDATE_DIR / "model.pt")


def set_evaluation(root: Path, passed: bool, production_version: str | None = None, ndcg: float = 0.2) -> None:
    """Write the three files the evaluate stage leaves for promote."""
    write_json({"test_users": 2, "model": {"test_ndcg@10": ndcg}, "popularity": {"test_ndcg@10": 0.1}},
               root / config.METRICS_FILE)
    check = {"name": "test_ndcg@10 above popularity", "passed": passed, "verdict": "pass" if passed else "fail",
             "value": ndcg, "threshold": 0.11, "rule": "candidate > popularity x 1.1", "note": ""}
    write_json({"passed": passed, "metric": "test_ndcg@10", "production_version": production_version,
                "checks": [check], "reasons": [f"test_ndcg@10 above popularity: {check['verdict']}"]},
               root / config.GATE_FILE)
    write_json({"intervals": {"model": {"test_ndcg@10": {"low": ndcg - 0.05, "high": ndcg + 0.05}}},
                "bootstrap": {"resamples": 100, "confidence": 0.95, "seed": 0}, "difference": {}, "slices": {},
                "efficiency": {}}, root / promote.EVALUATION_FILE)


def next_candidate(root: Path, seed: int = 1) -> None:
    """Replace the candidate with a new model evaluated against the current production model."""
    save_candidate(root, seed)
    set_evaluation(root, passed=True, production_version=registry.production(root)["version"])
