"""The built-in `fashion-shop` dataset: real product images, simulated shoppers.

The catalog is a seeded sample of Fashion-MNIST, Zalando's 28 x 28 grayscale
article photos in 10 product categories, read from the files of the Debian
package `dataset-fashion-mnist`. No interaction log exists for these products,
so a seeded simulator generates one. Each simulated shopper has:

- preferences over the 10 categories, drawn from a Dirichlet distribution
  (a small `category_concentration` means a few favourite categories);
- a preferred visual style, a point in a two-dimensional style space whose
  axes are measured on each product image: tone (mean brightness of the
  article's pixels) and texture (mean contrast between neighbouring pixels).
  Products far from the preferred style, in units of `style_tolerance`, are
  less attractive;
- a taste that drifts a little after each interaction, and a pull towards the
  category of the previous interaction (shopping sessions).

Every product also has a hidden appeal that no feature shows. Shoppers visit
over 2024, at exponential gaps, and interact with each product at most once.
The interactions are simulated; only the images are real.
"""

from __future__ import annotations

import gzip
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
IMAGES_FILE = "train-images-idx3-ubyte.gz"
LABELS_FILE = "train-labels-idx1-ubyte.gz"
# Class names in label order, as the Fashion-MNIST authors publish them.
CATEGORIES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
              "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# IDX magic numbers: unsigned bytes with 3 dimensions (images) and 1 dimension (labels).
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
# Pixels brighter than this belong to the article, darker ones to the background.
ARTICLE_THRESHOLD = 32
# First simulated visit: 2024-01-01T00:00:00Z.
SIMULATION_START = 1_704_067_200
DAY = 86_400

# Fixed simulator settings; the README and docs/fashion-shop.md describe them.
APPEAL_SPREAD = 0.7
SESSION_PULL = 1.0
STYLE_DRIFT = 0.03
MEAN_GAP_DAYS = 2.0
FIRST_VISIT_DAYS = 300
MIN_INTERACTIONS = 5


@dataclass
class SimulatorParams:
    """Settings of the shopper simulator (`ingest.fashion_shop` in params.yaml)."""

    shoppers: int
    interactions_per_shopper: float
    category_concentration: float
    style_tolerance: float
    seed: int


# ---------------------------------------------------------------- Fashion-MNIST files


def source_files(folder: Path) -> tuple[Path, Path]:
    """Return the image and label files, failing with the install command when they are absent."""
    images, labels = Path(folder) / IMAGES_FILE, Path(folder) / LABELS_FILE
    for path in (images, labels):
        if not path.is_file():
            raise DataError(
                f"Fashion-MNIST not found: {path} does not exist. Install the Debian package "
                "dataset-fashion-mnist (as root: apt-get install dataset-fashion-mnist; `make setup` "
                "does this when run as root), or set ingest.fashion_shop.source to the folder with its files"
            )
    return images, labels


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read a gzip-compressed IDX file of unsigned bytes and return its array."""
    try:
        with gzip.open(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: cannot be read as a gzip-compressed IDX file ({error})") from error
    dimensions = magic & 0xFF
    header = 4 + 4 * dimensions
    if len(data) < header or struct.unpack(">I", data[:4])[0] != magic:
        raise DataError(f"{path}: not an IDX file of magic number {magic:#010x}")
    shape = struct.unpack(f">{dimensions}I", data[4:header])
    if len(data) - header != int(np.prod(shape)):
        raise DataError(f"{path}: header gives shape {shape}, but the file contains {len(data) - header} data bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_fashion_mnist(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return the 60,000 training images (N, 28, 28) and their labels (N,)."""
    images_path, labels_path = source_files(folder)
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(f"{images_path}: {len(images)} images, but {labels_path} has {len(labels)} labels")
    if labels.max(initial=0) >= len(CATEGORIES):
        raise DataError(f"{labels_path}: label {int(labels.max())} is outside 0-{len(CATEGORIES) - 1}")
    return images, labels


# ---------------------------------------------------------------- visual style


def style_coordinates(images: np.ndarray) -> np.ndarray:
    """Place each image in the style space (tone, texture), each axis ranked into [0, 1].

    Tone is the mean brightness of the article's pixels, texture the mean
    absolute difference between horizontally and vertically neighbouring
    article pixels. Ranks make both axes uniform over the catalog.
    """
    pixels = images.astype(np.float64)
    article = pixels > ARTICLE_THRESHOLD
    area = np.maximum(article.sum(axis=(1, 2)), 1)
    tone = (pixels * article).sum(axis=(1, 2)) / area
    horizontal = np.abs(np.diff(pixels, axis=2)) * (article[:, :, 1:] & article[:, :, :-1])
    vertical = np.abs(np.diff(pixels, axis=1)) * (article[:, 1:, :] & article[:, :-1, :])
    texture = (horizontal.sum(axis=(1, 2)) + vertical.sum(axis=(1, 2))) / area
    return np.stack([_ranks(tone), _ranks(texture)], axis=1)


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(len(values))
    return ranks / max(len(values) - 1, 1)


# ---------------------------------------------------------------- shopper simulator


def simulate_interactions(categories: np.ndarray, styles: np.ndarray, params: SimulatorParams) -> pd.DataFrame:
    """Generate the interaction log of `params.shoppers` shoppers over `categories` and `styles` of the products.

    Returns columns shopper (0-based), product (0-based row of the catalog) and timestamp (Unix seconds).
    """
    rng = np.random.default_rng(params.seed)
    appeal = rng.normal(0.0, APPEAL_SPREAD, len(categories))
    n_categories = len(CATEGORIES)
    rows: list[tuple[int, int, int]] = []
    for shopper in range(params.shoppers):
        taste = rng.dirichlet(np.full(n_categories, params.category_concentration))
        preferred_style = rng.uniform(0.0, 1.0, 2)
        count = MIN_INTERACTIONS + rng.poisson(max(params.interactions_per_shopper - MIN_INTERACTIONS, 0.0))
        count = min(count, len(categories))
        times = _visit_times(rng, count)
        for product, timestamp in zip(_shopper_choices(rng, taste, preferred_style, categories, styles,
                                                       appeal, count, params.style_tolerance), times):
            rows.append((shopper, product, timestamp))
    return pd.DataFrame(rows, columns=["shopper", "product", "timestamp"])


def _visit_times(rng: np.random.Generator, count: int) -> np.ndarray:
    first = rng.uniform(0, FIRST_VISIT_DAYS * DAY)
    gaps = rng.exponential(MEAN_GAP_DAYS * DAY, count - 1)
    return (SIMULATION_START + first + np.r_[0.0, np.cumsum(gaps)]).astype(np.int64)


def _shopper_choices(rng: np.random.Generator, taste: np.ndarray, preferred_style: np.ndarray,
                     categories: np.ndarray, styles: np.ndarray, appeal: np.ndarray, count: int,
                     tolerance: float) -> list[int]:
    """Pick `count` distinct products one after another by the Gumbel-max trick over the shopper's utility."""
    base = np.log(taste[categories] + 1e-12) + appeal
    available = np.ones(len(categories), dtype=bool)
    chosen: list[int] = []
    previous_category = -1
    style = preferred_style.copy()
    for _ in range(count):
        distance = ((styles - style) ** 2).sum(axis=1)
        utility = base - distance / (2 * tolerance**2) + SESSION_PULL * (categories == previous_category)
        utility = np.where(available, utility + rng.gumbel(size=len(utility)), -np.inf)
        product = int(np.argmax(utility))
        chosen.append(product)
        available[product] = False
        previous_category = categories[product]
        style = np.clip(style + rng.normal(0.0, STYLE_DRIFT, 2), 0.0, 1.0)
    return chosen


# ---------------------------------------------------------------- catalog tables


def simulator_params(params: dict[str, Any]) -> SimulatorParams:
    """Read and check the simulator settings of `ingest.fashion_shop`."""
    values = {
        "shoppers": params.get("shoppers", 1000),
        "interactions_per_shopper": params.get("interactions_per_shopper", 20),
        "category_concentration": params.get("category_concentration", 0.3),
        "style_tolerance": params.get("style_tolerance", 0.15),
        "seed": params.get("seed", 42),
    }
    for key in ("shoppers", "seed"):
        if not isinstance(values[key], int) or isinstance(values[key], bool) or values[key] < (1 if key == "shoppers" else 0):
            raise ConfigError(f"params.yaml: ingest.fashion_shop.{key} is {values[key]!r}, expected a "
                              f"{'positive' if key == 'shoppers' else 'non-negative'} integer")
    for key in ("interactions_per_shopper", "category_concentration", "style_tolerance"):
        if not isinstance(values[key], (int, float)) or isinstance(values[key], bool) or values[key] <= 0:
            raise ConfigError(f"params.yaml: ingest.fashion_shop.{key} is {values[key]!r}, expected a positive number")
    return SimulatorParams(**values)


def catalog_size(params: dict[str, Any], available: int) -> int:
    size = params.get("products", 3000)
    if not isinstance(size, int) or isinstance(size, bool) or not MIN_INTERACTIONS <= size <= available:
        raise ConfigError(f"params.yaml: ingest.fashion_shop.products is {size!r}, "
                          f"expected an integer from {MIN_INTERACTIONS} to {available}")
    return size


def build_fashion_shop(params: dict[str, Any]) -> tuple[dict[str, pd.DataFrame], dict[str, np.ndarray]]:
    """Sample the catalog, simulate shoppers and return the raw tables and the product images by item id.

    The items table's `image_path` is left for the caller, which decides where the PNG files go.
    """
    simulator = simulator_params(params)
    images, labels = read_fashion_mnist(Path(params.get("source") or DEFAULT_SOURCE))
    size = catalog_size(params, len(images))
    rows = np.sort(np.random.default_rng(simulator.seed).choice(len(images), size, replace=False))
    item_ids = [f"fm{row:05d}" for row in rows]
    categories = labels[rows].astype(np.int64)
    log.info("fashion-shop: %d products sampled from %d Fashion-MNIST images; simulating %d shoppers",
             size, len(images), simulator.shoppers)

    log_frame = simulate_interactions(categories, style_coordinates(images[rows]), simulator)
    interactions = pd.DataFrame({
        "user_id": [f"s{shopper:05d}" for shopper in log_frame["shopper"]],
        "item_id": [item_ids[product] for product in log_frame["product"]],
        "timestamp": log_frame["timestamp"].to_numpy(),
    }).sort_values("timestamp", kind="mergesort").reset_index(drop=True)
    items = pd.DataFrame({
        "item_id": item_ids,
        "title": [f"{CATEGORIES[label]} {row:05d}" for label, row in zip(categories, rows)],
        "categories": [CATEGORIES[label] for label in categories],
    })
    users = pd.DataFrame({"user_id": [f"s{shopper:05d}" for shopper in range(simulator.shoppers)]})
    return ({"interactions": interactions, "items": items, "users": users},
            {item_id: images[row] for item_id, row in zip(item_ids, rows)})
