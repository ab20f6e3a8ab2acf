"""Augment stage: check the product images and record the augmentation policy.

Run as `python -m pipelines.augment` (the DVC stage `augment`, between split
and train). Reads the `augment` section of params.yaml and writes:

- `data/augment/catalog.npz`: the checked product images packed as uint8
  (see pipelines/images.py), which items are held out for the cold-start
  report, and each item's training popularity;
- `data/augment/policy.json`: the augmentation policy that training applies.
  The train stage depends on both files, so a policy change reruns training,
  and dvc.lock records the `augment` params of every run;
- `reports/augment.json` (image checks, dropped images, policy) and
  `reports/augment_samples.png`, a grid of original and augmented samples.

Training applies the policy on the fly. Image augmentation (random resized
crop, rotation, flips, brightness, contrast and, for colour catalogs,
saturation) runs with kornia on each step's batch of catalog images, with a
random stream seeded by `augment.seed` and the step number, so each step sees
new variants and a rerun sees the same ones. Feature augmentation
(popularity-weighted negatives, item masking, history crop and dropout) draws
from the training random generator that `train.seed` seeds.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipelines import config, images
from pipelines.errors import ConfigError, DataError
from pipelines.io import atomic_path, read_json, write_json

log = logging.getLogger(__name__)

AUGMENT_DIR = Path("data/augment")
CATALOG_FILE = AUGMENT_DIR / "catalog.npz"
POLICY_FILE = AUGMENT_DIR / "policy.json"
REPORT_FILE = config.REPORTS_DIR / "augment.json"
SAMPLES_FILE = config.REPORTS_DIR / "augment_samples.png"
SAMPLE_VARIANTS = 4

# Image transforms in the order they run, and the keys each one takes besides `p`.
IMAGE_TRANSFORMS = {
    "resized_crop": ("scale", "ratio"),
    "rotation": ("degrees",),
    "horizontal_flip": (),
    "vertical_flip": (),
    "brightness": ("range",),
    "contrast": ("range",),
    "saturation": ("range",),
}
NEGATIVE_SAMPLERS = ("uniform", "popularity")


# ---------------------------------------------------------------- policy


def check_policy(params: dict[str, Any]) -> dict[str, Any]:
    """Validate the `augment` params that training reads and return them as the policy."""
    seed = params.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"params.yaml: augment.seed is {seed!r}, expected a non-negative integer")
    return {
        "seed": seed,
        "image_augmentation": check_image_policy(_mapping(params, "image_augmentation", "augment")),
        "feature_augmentation": check_feature_policy(_mapping(params, "feature_augmentation", "augment")),
    }


def check_image_policy(params: dict[str, Any]) -> dict[str, Any]:
    key = "augment.image_augmentation"
    policy: dict[str, Any] = {"enabled": _flag(params.get("enabled", True), f"{key}.enabled")}
    for name, extra in IMAGE_TRANSFORMS.items():
        settings = _mapping(params, name, key)
        where = f"{key}.{name}"
        checked = {"p": _share(settings.get("p", 0.0), f"{where}.p")}
        if "scale" in extra:
            checked["scale"] = _range(settings.get("scale", [0.75, 1.0]), f"{where}.scale", 0.0, 1.0, positive=True)
            checked["ratio"] = _range(settings.get("ratio", [0.75, 1.333]), f"{where}.ratio", 0.0, None, positive=True)
        if "degrees" in extra:
            checked["degrees"] = _number(settings.get("degrees", 0.0), f"{where}.degrees", 0.0, 180.0)
        if "range" in extra:
            checked["range"] = _range(settings.get("range", [1.0, 1.0]), f"{where}.range", 0.0, None)
        policy[name] = checked
    return policy


def check_feature_policy(params: dict[str, Any]) -> dict[str, Any]:
    key = "augment.feature_augmentation"
    negatives = _mapping(params, "negatives", key)
    sampler = negatives.get("sampler", "uniform")
    if sampler not in NEGATIVE_SAMPLERS:
        raise ConfigError(f"params.yaml: {key}.negatives.sampler is {sampler!r}, "
                          f"expected one of: {', '.join(NEGATIVE_SAMPLERS)}")
    masking, crop, dropout = (_mapping(params, name, key) for name in ("mask_items", "history_crop", "history_dropout"))
    min_length = crop.get("min_length", 1)
    if not isinstance(min_length, int) or isinstance(min_length, bool) or min_length < 1:
        raise ConfigError(f"params.yaml: {key}.history_crop.min_length is {min_length!r}, expected a positive integer")
    return {
        "negatives": {"sampler": sampler, "popularity_exponent": _number(
            negatives.get("popularity_exponent", 0.75), f"{key}.negatives.popularity_exponent", 0.0, None)},
        "mask_items": {"enabled": _flag(masking.get("enabled", False), f"{key}.mask_items.enabled"),
                       "id": _share(masking.get("id", 0.0), f"{key}.mask_items.id"),
                       "attributes": _share(masking.get("attributes", 0.0), f"{key}.mask_items.attributes")},
        "history_crop": {"enabled": _flag(crop.get("enabled", False), f"{key}.history_crop.enabled"),
                         "p": _share(crop.get("p", 0.0), f"{key}.history_crop.p"), "min_length": min_length},
        "history_dropout": {"enabled": _flag(dropout.get("enabled", False), f"{key}.history_dropout.enabled"),
                            "p": _share(dropout.get("p", 0.0), f"{key}.history_dropout.p")},
    }


def _mapping(params: dict[str, Any], name: str, parent: str) -> dict[str, Any]:
    value = params.get(name) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"params.yaml: {parent}.{name} is {value!r}, expected a mapping")
    return value


def _flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"params.yaml: {key} is {value!r}, expected true or false")
    return value


def _number(value: Any, key: str, low: float, high: float | None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low or (high is not None and value > high):
        allowed = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise ConfigError(f"params.yaml: {key} is {value!r}, expected a number {allowed}")
    return float(value)


def _share(value: Any, key: str) -> float:
    return _number(value, key, 0.0, 1.0)


def _range(value: Any, key: str, low: float, high: float | None, positive: bool = False) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ConfigError(f"params.yaml: {key} is {value!r}, expected a pair [low, high]")
    first, second = (_number(bound, key, low, high) for bound in value)
    if first > second or (positive and first == 0):
        condition = "0 < low <= high" if positive else "low <= high"
        raise ConfigError(f"params.yaml: {key} is {value!r}, expected {condition}")
    return [first, second]


# ---------------------------------------------------------------- image augmentation


def image_transforms(policy: dict[str, Any], channels: int, size: int) -> torch.nn.Sequential:
    """Build the kornia transforms of an image policy; transforms with p = 0 are left out.

    Saturation needs colour, so a grayscale catalog (1 channel) skips it.
    """
    import kornia.augmentation as K

    if not policy["enabled"]:
        return torch.nn.Sequential()
    build = {
        "resized_crop": lambda s: K.RandomResizedCrop((size, size), scale=tuple(s["scale"]),
                                                      ratio=tuple(s["ratio"]), p=1.0),
        "rotation": lambda s: K.RandomRotation(s["degrees"], p=1.0),
        "horizontal_flip": lambda s: K.RandomHorizontalFlip(p=1.0),
        "vertical_flip": lambda s: K.RandomVerticalFlip(p=1.0),
        "brightness": lambda s: K.RandomBrightness(tuple(s["range"]), p=1.0),
        "contrast": lambda s: K.RandomContrast(tuple(s["range"]), p=1.0),
        "saturation": lambda s: K.RandomSaturation(tuple(s["range"]), p=1.0),
    }
    steps = [RandomSubset(build[name](policy[name]), policy[name]["p"]) for name in IMAGE_TRANSFORMS
             if policy[name]["p"] > 0 and (name != "saturation" or channels == 3)]
    return torch.nn.Sequential(*steps)


class RandomSubset(torch.nn.Module):
    """Apply a transform to each image of the batch with probability `p`.

    With kornia 0.9 on a CPU, a crop with kornia's own p = 0.3 took as long on 3,000
    images of 28 x 28 pixels as one with p = 1, so only the chosen images are passed on.
    """

    def __init__(self, transform: torch.nn.Module, p: float):
        super().__init__()
        self.transform = transform
        self.p = p

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.p >= 1.0:
            return self.transform(batch)
        chosen = torch.rand(len(batch), device=batch.device) < self.p
        if not chosen.any():
            return batch
        result = batch.clone()
        result[chosen] = self.transform(batch[chosen])
        return result


def augment_images(transforms: torch.nn.Module, batch: torch.Tensor, seed: int) -> torch.Tensor:
    """Apply `transforms` to a float batch (N, C, H, W) in [0, 1] with a random stream fixed by `seed`.

    The global random state is saved and restored around the call, so other
    random draws of the training step do not depend on the augmentation.
    """
    devices = [batch.device.index or 0] if batch.is_cuda else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        with torch.no_grad():
            augmented = transforms(batch)
    return augmented.clamp(0.0, 1.0)


class ImageAugmenter:
    """Augments one batch per call, with the seed of call n derived from the policy seed and n."""

    def __init__(self, policy: dict[str, Any], channels: int, size: int):
        self.transforms = image_transforms(policy["image_augmentation"], channels, size)
        self.seed = int(policy["seed"])
        self.calls = 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        seed = self.seed * 1_000_003 + self.calls
        self.calls += 1
        return augment_images(self.transforms, batch, seed)


# ---------------------------------------------------------------- feature augmentation


def crop_histories(history: torch.Tensor, p: float, min_length: int) -> torch.Tensor:
    """Cut a share `p` of the histories (B, L; newest last) to their last k items, k uniform in [min_length, L]."""
    batch, length = history.shape
    cut = torch.rand(batch, device=history.device) < p
    keep = torch.randint(min(min_length, length), length + 1, (batch,), device=history.device)
    start = torch.where(cut, length - keep, torch.zeros_like(keep))
    return history.masked_fill(torch.arange(length, device=history.device)[None, :] < start[:, None], 0)


def drop_history_items(history: torch.Tensor, p: float) -> torch.Tensor:
    """Remove each history item except the newest with probability `p`; the rest move right, in order."""
    dropped = (torch.rand(history.shape, device=history.device) < p) & (history > 0)
    dropped[:, -1] = False
    kept = history.masked_fill(dropped, 0)
    order = torch.argsort((kept > 0).int(), dim=1, stable=True)
    return kept.gather(1, order)


def negative_weights(policy: dict[str, Any], item_known: np.ndarray | None, popularity: np.ndarray) -> torch.Tensor | None:
    """Sampling weights of the negatives over item indices, or None for uniform over the whole catalog."""
    negatives = policy["negatives"]
    if negatives["sampler"] == "uniform" and item_known is None:
        return None
    weights = np.ones(len(popularity)) if negatives["sampler"] == "uniform" else \
        np.power(popularity.astype(np.float64), negatives["popularity_exponent"])
    weights[0] = 0.0
    if item_known is not None:
        weights = weights * item_known
    if weights.sum() <= 0:
        raise DataError(f"no item can be sampled as a negative with the {negatives['sampler']} sampler: "
                        "every item is held out or has no training interactions")
    return torch.as_tensor(weights, dtype=torch.float64)


class FeatureAugmenter:
    """Negative sampling and history augmentation of the training step, as the policy switches them."""

    def __init__(self, policy: dict[str, Any], n_items: int, item_known: np.ndarray | None, popularity: np.ndarray):
        self.policy = policy
        self.n_items = n_items
        self.weights = negative_weights(policy, item_known, popularity)

    def negatives(self, count: int, device: torch.device) -> torch.Tensor:
        if self.weights is None:
            return torch.randint(1, self.n_items + 1, (count,), device=device)
        return torch.multinomial(self.weights, count, replacement=True).to(device)

    def histories(self, history: torch.Tensor) -> torch.Tensor:
        crop, dropout = self.policy["history_crop"], self.policy["history_dropout"]
        if crop["enabled"] and crop["p"] > 0:
            history = crop_histories(history, crop["p"], crop["min_length"])
        if dropout["enabled"] and dropout["p"] > 0:
            history = drop_history_items(history, dropout["p"])
        return history


# ---------------------------------------------------------------- training inputs


def load_training_inputs(root: Path, item_ids: list[str]) -> dict[str, Any]:
    """Read the augment stage's outputs for training, checked against the catalog's item order."""
    path = root / CATALOG_FILE
    if not path.is_file() or not (root / POLICY_FILE).is_file():
        raise DataError(f"{path}: file not found; run the augment stage before train")
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: cannot be read ({error}); rerun the augment stage") from error
    if arrays["item_ids"].tolist() != list(item_ids):
        raise DataError(f"{path}: its items differ from data/ingested/items.parquet; rerun the augment stage")
    policy = read_json(root / POLICY_FILE)
    # Training runs are named after their inputs, so the packed data's digest joins the policy.
    policy["inputs_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    known = arrays["item_known"]
    if "images" in arrays:
        log.info("image path on: %d of %d items have an image (%s)", int(arrays["has_image"].sum()),
                 len(item_ids), "x".join(map(str, arrays["images"].shape[1:])))
    else:
        log.info("image path off: the catalog has no images, so the item tower uses ids and attributes only")
    return {
        "item_images": arrays.get("images"),
        "item_known": None if known.all() else known,
        "popularity": arrays["popularity"],
        "augment_policy": policy,
    }


def worker_arrays(data: dict[str, Any]) -> dict[str, Any]:
    """Return the augment inputs that travel to every Ray worker with the training arrays."""
    return {name: data.get(name) for name in ("item_images", "item_known", "popularity")}


def model_inputs(arrays: dict[str, Any]) -> dict[str, torch.Tensor | None]:
    """Keyword arguments of build_model for the optional image and cold-item buffers."""
    return {name: None if arrays.get(name) is None else torch.as_tensor(arrays[name])
            for name in ("item_images", "item_known")}


def attach(model, arrays: dict[str, Any], policy: dict[str, Any] | None) -> FeatureAugmenter:
    """Switch on the policy's image augmentation and item masking in `model`; return the batch augmenter.

    Without a policy nothing is augmented and negatives are uniform over the catalog.
    """
    policy = policy or check_policy({"image_augmentation": {"enabled": False}})
    features = policy["feature_augmentation"]
    if model.item_images is not None:
        model.image_augmentation = ImageAugmenter(policy, model.item_images.shape[1], model.item_images.shape[2])
    if features["mask_items"]["enabled"]:
        model.item_masking = (features["mask_items"]["id"], features["mask_items"]["attributes"])
    popularity = arrays.get("popularity")
    popularity = np.ones(model.n_items + 1) if popularity is None else popularity
    return FeatureAugmenter(features, model.n_items, arrays.get("item_known"), popularity)


# ---------------------------------------------------------------- stage


def catalog_arrays(items: pd.DataFrame, splits: dict[str, pd.DataFrame]) -> dict[str, np.ndarray]:
    """Per-item arrays in item index order (row 0 is padding): held-out flags and training popularity."""
    index = {item_id: row for row, item_id in enumerate(items["item_id"].astype(str), start=1)}
    known = np.ones(len(items) + 1, dtype=bool)
    held_out = splits["coldstart"]["item_id"].astype(str).map(index).dropna().astype(int)
    known[held_out.to_numpy()] = False
    counted = splits["train"]["item_id"].astype(str).map(index).dropna().astype(int)
    popularity = np.bincount(counted.to_numpy(), minlength=len(items) + 1).astype(np.float64)
    return {"item_ids": np.asarray(items["item_id"].astype(str).tolist(), dtype=str),
            "item_known": known, "popularity": popularity}


def write_catalog(arrays: dict[str, np.ndarray], target: Path) -> None:
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def draw_samples(packed: images.CatalogImages | None, policy: dict[str, Any], count: int, target: Path) -> None:
    """Draw `count` catalog images, each beside SAMPLE_VARIANTS augmented variants, as a PNG grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if packed is None or packed.count == 0 or count == 0:
        figure = plt.figure(figsize=(6, 1))
        figure.text(0.5, 0.5, "The catalog has no images, so image augmentation is off.", ha="center", va="center")
    else:
        rows = np.random.default_rng(policy["seed"]).choice(
            np.flatnonzero(packed.has_image), min(count, packed.count), replace=False)
        originals = torch.as_tensor(packed.pixels[rows]).float() / 255.0
        augmenter = ImageAugmenter(policy, originals.shape[1], originals.shape[2])
        columns = [originals] + [augmenter(originals) for _ in range(SAMPLE_VARIANTS)]
        figure, axes = plt.subplots(len(rows), len(columns), figsize=(1.4 * len(columns), 1.4 * len(rows)),
                                    squeeze=False)
        for column, batch in enumerate(columns):
            for row in range(len(rows)):
                _show(axes[row][column], batch[row], "original" if column == 0 else f"augmented {column}", row == 0)
    figure.tight_layout()
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def _show(axis, image: torch.Tensor, title: str, with_title: bool) -> None:
    pixels = image.permute(1, 2, 0).numpy()
    axis.imshow(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels, cmap="gray", vmin=0.0, vmax=1.0)
    axis.set_axis_off()
    if with_title:
        axis.set_title(title, fontsize=8)


def augment(root: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Check and pack the images, write the policy, the catalog arrays and the samples; return the report."""
    policy = check_policy(params)
    image_params = _mapping(params, "images", "augment")
    limits = images.image_limits(image_params)
    items = _read(root / config.INGESTED_DIR / "items.parquet", "ingest")
    splits = {name: _read(root / config.SPLIT_DIR / f"{name}.parquet", "split") for name in ("train", "coldstart")}

    packed = images.load_catalog_images(items, root, limits, image_params.get("on_error", "fail"))
    arrays = catalog_arrays(items, splits)
    if packed is not None and packed.count:
        arrays.update(images=packed.pixels, has_image=packed.has_image)
    samples = image_params.get("samples", 8)
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 0:
        raise ConfigError(f"params.yaml: augment.images.samples is {samples!r}, expected a non-negative integer")

    write_catalog(arrays, root / CATALOG_FILE)
    write_json(policy, root / POLICY_FILE)
    draw_samples(packed, policy, samples, root / SAMPLES_FILE)
    return report(policy, items, packed, arrays)


def report(policy: dict[str, Any], items: pd.DataFrame, packed: images.CatalogImages | None,
           arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    with_path = int(items["image_path"].notna().sum()) if "image_path" in items.columns else 0
    summary: dict[str, Any] = {"items": len(items), "with_image_path": with_path,
                               "image_path": "on" if packed is not None and packed.count else "off"}
    if packed is not None:
        summary.update(packed=packed.count, dropped=len(packed.dropped), dropped_items=packed.dropped,
                       channels=int(packed.pixels.shape[1]), size=int(packed.pixels.shape[2]))
    return {"policy": policy, "images": summary, "coldstart_items": int((~arrays["item_known"][1:]).sum()),
            "samples": str(SAMPLES_FILE)}


def _read(path: Path, stage: str) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: file not found; run the {stage} stage first")
    return pd.read_parquet(path)


def main() -> None:
    from pipelines.cli import run_stage

    def stage() -> None:
        root = config.workspace()
        result = augment(root, config.section(config.load_params(), "augment"))
        write_json(result, root / REPORT_FILE)
        images_summary = result["images"]
        if images_summary["image_path"] == "off":
            log.info("no item has a usable image: the image path is off; wrote the policy to %s", POLICY_FILE)
        else:
            log.info("packed %d image(s) (%d dropped) into %s; samples in %s", images_summary["packed"],
                     images_summary["dropped"], CATALOG_FILE, SAMPLES_FILE)

    run_stage("augment", stage)


if __name__ == "__main__":
    main()
