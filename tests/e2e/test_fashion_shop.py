"""Whole-pipeline run on a small fashion-shop catalog: real product images, simulated shoppers."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from pipelines import fashion
from tests.conftest import update_params
from tests.e2e.test_pipeline import copy_repository, run

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not (fashion.DEFAULT_SOURCE / fashion.IMAGES_FILE).is_file(),
                       reason="Debian package dataset-fashion-mnist not installed (make setup installs it as root)"),
]

STAGES = ["ingest", "validate", "split", "augment", "train", "compress", "evaluate", "coldstart", "promote"]


@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory):
    """Run `dvc repro` once on 300 products and 150 shoppers, with 30 products held out, for two epochs."""
    root = copy_repository(tmp_path_factory.mktemp("e2e") / "shoprec")
    update_params(root, {
        "ingest.dataset": "fashion-shop",
        "ingest.fashion_shop.products": 300,
        "ingest.fashion_shop.shoppers": 150,
        "ingest.fashion_shop.interactions_per_shopper": 15,
        "split.coldstart_items": 0.1,
        "augment.feature_augmentation.mask_items.enabled": True,
        "train.epochs": 2,
        "train.patience": 0,
        "compress.prune.finetune_steps": 100,
        "compress.distill.epochs": 1,
        "compress.measure.latency_users": 50,
        # Two epochs on 300 products need not beat popularity; serving the image model is tested anyway.
        "promote.force": True,
    })
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Unix socket paths must stay short
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "RAY_TMPDIR": ray_tmp, "SHOPREC_WORKSPACE": str(root)}
    env.pop("RAY_ADDRESS", None)
    first = run(["dvc", "repro"], root, env)
    yield {"root": root, "env": env, "first": first}
    shutil.rmtree(ray_tmp, ignore_errors=True)


def test_every_stage_ran(fashion_run):
    assert sorted(re.findall(r"Running stage '(\w+)'", fashion_run["first"].stdout)) == sorted(STAGES)


def test_product_images_written(fashion_run):
    root = fashion_run["root"]
    images = sorted((root / "data" / "ingested" / "images").glob("*.png"))
    assert len(images) == 300
    report = json.loads((root / "reports" / "augment.json").read_text())
    assert report["images"]["image_path"] == "on"
    assert report["images"]["packed"] == 300
    assert (root / "reports" / "augment_samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def held_out_items(root):
    return set(pd.read_parquet(root / "data" / "split" / "coldstart.parquet")["item_id"])


def test_held_out_products_stay_out(fashion_run):
    root = fashion_run["root"]
    held_out = held_out_items(root)
    interacted = pd.read_parquet(root / "data" / "ingested" / "interactions.parquet")["item_id"].nunique()
    assert len(held_out) == round(0.1 * interacted)
    for name in ("train", "valid", "test"):
        assert held_out.isdisjoint(pd.read_parquet(root / "data" / "split" / f"{name}.parquet")["item_id"])


def test_model_carries_images(fashion_run):
    root = fashion_run["root"]
    bundle = torch.load(root / "models" / "candidate" / "model.pt", weights_only=True)
    state = bundle["state_dict"]
    assert state["item_images"].shape == (301, 1, 28, 28)
    assert any(name.startswith("image_encoder.") for name in state)
    cold = {bundle["item_ids"][row - 1] for row in torch.nonzero(~state["item_known"]).flatten().tolist()}
    assert cold == held_out_items(root)


def test_coldstart_report(fashion_run):
    report = json.loads((fashion_run["root"] / "reports" / "coldstart.json").read_text())
    assert report["enabled"] is True
    assert report["cold_items"] == len(held_out_items(fashion_run["root"]))
    assert set(report["rankers"]) == {"images_on", "images_off", "popularity"}
    for values in report["rankers"].values():
        assert 0.0 <= values["coldstart_recall@10"] <= 1.0
        assert 0.0 <= values["coldstart_ndcg@10"] <= 1.0
    assert report["image_lift"]["metric"] == "coldstart_recall@10"


def test_recommend_answers(fashion_run):
    result = run([sys.executable, "-m", "pipelines.cli", "recommend", "--user", "s00001", "-k", "5"],
                 fashion_run["root"], fashion_run["env"])
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "top 5 for user s00001 (model v0001):"
    assert len(lines) == 6


def test_policy_change_reaches_training(fashion_run):
    root, env = fashion_run["root"], fashion_run["env"]
    update_params(root, {"augment.image_augmentation.rotation.p": 0.9})
    assert "Running stage 'augment'" in run(["dvc", "repro", "augment"], root, env).stdout
    status = subprocess.run(["dvc", "status", "train"], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert re.search(r"modified:\s+data/augment", status.stdout), status.stdout
