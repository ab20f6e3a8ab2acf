"""Measure whether image augmentation keeps up with the training step on fashion-shop.

Run from the repository root with the project's virtual environment (needs the
Debian package dataset-fashion-mnist):

    .venv/bin/python benchmarks/augment_throughput.py [--threads 1 2] [--output benchmarks/results/augment_throughput.json]

Uses the default fashion-shop catalog and the default policy and train params
of params.yaml. Every training step encodes the whole catalog, so both rates
are in catalog images per second. Both are measured for each `--threads`
count of torch threads: 1 is what each of the 2 default Ray workers gets
(`train.cpus_per_worker`), 2 is one process using both cores.

- augment-and-load: the path training runs at each step, from the packed uint8
  catalog to float images through the policy's kornia transforms
  (pipelines.augment.ImageAugmenter);
- consumption: catalog size divided by the time of one training step
  (pipelines.train's training_step, backward pass and AdamW update on a batch
  of `train.batch_size` users) with image augmentation switched off.

The ratio augment-and-load / consumption must be at least 1.5.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines import augment, config, fashion, train  # noqa: E402

WARMUP = 2
REPEATS = 10


def catalog_images(params: dict) -> np.ndarray:
    """Pack the default catalog's images as training does: (products + 1, 1, 28, 28) uint8, row 0 empty."""
    shop = params["ingest"]["fashion_shop"]
    images, _ = fashion.read_fashion_mnist(Path(shop["source"]))
    rows = np.sort(np.random.default_rng(shop["seed"]).choice(len(images), shop["products"], replace=False))
    packed = np.zeros((len(rows) + 1, 1, 28, 28), dtype=np.uint8)
    packed[1:, 0] = images[rows]
    return packed


def timed(function, repeats: int = REPEATS) -> float:
    """Median seconds of `function()` after WARMUP untimed calls."""
    for _ in range(WARMUP):
        function()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def augment_seconds(packed: np.ndarray, policy: dict) -> float:
    augmenter = augment.ImageAugmenter(policy, packed.shape[1], packed.shape[2])
    pixels = torch.as_tensor(packed[1:])
    return timed(lambda: augmenter(pixels.float() / 255.0))


def step_seconds(packed: np.ndarray, params: dict, policy: dict) -> float:
    """Median time of one training step, with image augmentation off so only consumption is timed."""
    train_params = params["train"]
    n_items, n_users, length = len(packed) - 1, params["ingest"]["fashion_shop"]["shoppers"], train_params["history_length"]
    policy = {**policy, "image_augmentation": {**policy["image_augmentation"], "enabled": False}}
    arrays = {"item_categories": np.random.default_rng(0).integers(1, 11, (n_items + 1, 1)),
              "item_year_buckets": np.zeros(n_items + 1, np.int64), "item_images": packed,
              "seen_indptr": np.zeros(n_users + 2, np.int64), "seen_indices": np.zeros(0, np.int64),
              "popularity": np.ones(n_items + 1)}
    model_config = {"n_items": n_items, "n_users": n_users, "embedding_dim": train_params["embedding_dim"],
                    "history_length": length, "dropout": train_params["dropout"]}
    hparams = {key: train_params[key] for key in ("num_negatives", "learning_rate", "weight_decay")}
    module = train.build_module(model_config, arrays, {**hparams, "augment": policy})
    optimizer = module.configure_optimizers()
    generator = np.random.default_rng(1)
    batch_size = train_params["batch_size"]
    history = generator.integers(1, n_items + 1, (batch_size, length))
    history[:, : length - 16] = 0  # fashion-shop shoppers have about 16 training interactions
    batch = (torch.as_tensor(generator.integers(1, n_users + 1, batch_size)), torch.as_tensor(history),
             torch.as_tensor(generator.integers(1, n_items + 1, batch_size)))

    def step() -> None:
        optimizer.zero_grad()
        module.training_step(batch, 0).backward()
        optimizer.step()

    return timed(step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="torch thread counts to measure (default: 1 2)")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "augment_throughput.json")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="You are trying to `self.log")

    params = config.load_params(REPO / "params.yaml")
    policy = augment.check_policy(params["augment"])
    packed = catalog_images(params)
    result = {
        "catalog_images": len(packed) - 1,
        "runs": [measure(packed, params, policy, threads) for threads in args.threads],
        "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
                   f"Python {platform.python_version()}, torch {torch.__version__}",
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


def measure(packed: np.ndarray, params: dict, policy: dict, threads: int) -> dict:
    """Both rates and their ratio with `threads` torch threads, and the machine's load around them."""
    torch.set_num_threads(threads)
    load_before = os.getloadavg()[0]
    augment_time = augment_seconds(packed, policy)
    step_time = step_seconds(packed, params, policy)
    n_images = len(packed) - 1
    return {
        "threads": threads,
        "augment_seconds": round(augment_time, 4),
        "augment_images_per_second": round(n_images / augment_time),
        "step_seconds": round(step_time, 4),
        "consumed_images_per_second": round(n_images / step_time),
        "ratio": round(step_time / augment_time, 2),
        "load_average_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)],
    }


if __name__ == "__main__":
    main()
