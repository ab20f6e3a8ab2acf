"""Check and load the product images that the items table references.

Every image is opened and checked before training starts, so a bad file
stops the augment stage with the item id and the path instead of failing in
the middle of training. A file fails when it is missing, cannot be decoded,
is neither grayscale (mode L) nor RGB, or has a side outside the configured
limits. Good images are padded to a square with black borders and resized
to `size` x `size` pixels. They are packed into one uint8 array of shape
(n_items + 1, channels, size, size), in which row 0 (padding) and the rows of
items without an image are zeros. The catalog has 3 channels when any image is RGB;
grayscale images are then repeated over the channels.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.errors import ConfigError, DataError

log = logging.getLogger(__name__)

MODES = ("L", "RGB")
ON_ERROR = ("fail", "drop")


@dataclass
class ImageLimits:
    """Target size of the packed images and the accepted size of a source image, in pixels."""

    size: int = 28
    min_side: int = 8
    max_side: int = 4096


@dataclass
class CatalogImages:
    """Packed images of the catalog, in item index order, and the items whose image was dropped."""

    pixels: np.ndarray  # (n_items + 1, channels, size, size) uint8
    has_image: np.ndarray  # (n_items + 1,) bool
    dropped: list[dict[str, str]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return int(self.has_image.sum())


class ImageError(DataError):
    """One product image cannot be used; the message names the item id and the path."""


def image_limits(params: dict) -> ImageLimits:
    """Read `augment.images` size settings, naming the first invalid key."""
    limits = ImageLimits(**{key: params.get(key, getattr(ImageLimits, key)) for key in ("size", "min_side", "max_side")})
    for key in ("size", "min_side", "max_side"):
        value = getattr(limits, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"params.yaml: augment.images.{key} is {value!r}, expected a positive integer")
    if limits.min_side > limits.max_side:
        raise ConfigError(f"params.yaml: augment.images.min_side ({limits.min_side}) is larger than "
                          f"augment.images.max_side ({limits.max_side})")
    return limits


def read_image(item_id: str, path: Path, limits: ImageLimits) -> np.ndarray:
    """Decode and check one image; return its pixels (size, size) for L or (size, size, 3) for RGB."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    where = f"item {item_id!r}: image {path}"
    if not path.is_file():
        raise ImageError(f"{where} not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                _check_size(where, image.size, limits)
                if image.mode not in MODES:
                    raise ImageError(f"{where} has mode {image.mode}, expected L (grayscale) or RGB")
                image.load()
                square = ImageOps.pad(image, (limits.size, limits.size), method=Image.Resampling.BILINEAR, color=0)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"{where} is implausibly large ({error})") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{where} cannot be decoded ({type(error).__name__}: {error})") from error
    return np.asarray(square, dtype=np.uint8)


def _check_size(where: str, size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if min(width, height) < limits.min_side or max(width, height) > limits.max_side:
        raise ImageError(f"{where} is {width}x{height} pixels, expected each side from "
                         f"{limits.min_side} to {limits.max_side} (augment.images.min_side, max_side)")


def load_catalog_images(items: pd.DataFrame, root: Path, limits: ImageLimits, on_error: str = "fail") -> CatalogImages | None:
    """Read every item's image in table order; None when no item has an `image_path`.

    With `on_error` "fail" the first bad image raises ImageError. With "drop"
    the item keeps its row and interactions but has no image, and the result's
    `dropped` lists it with the reason.
    """
    if on_error not in ON_ERROR:
        raise ConfigError(f"params.yaml: augment.images.on_error is {on_error!r}, expected one of: {', '.join(ON_ERROR)}")
    if "image_path" not in items.columns or items["image_path"].isna().all():
        return None
    decoded: dict[int, np.ndarray] = {}
    dropped: list[dict[str, str]] = []
    for row, (item_id, text) in enumerate(zip(items["item_id"].astype(str), items["image_path"]), start=1):
        if pd.isna(text) or not str(text).strip():
            continue
        path = Path(str(text))
        path = path if path.is_absolute() else root / path
        try:
            decoded[row] = read_image(item_id, path, limits)
        except ImageError as error:
            if on_error == "fail":
                raise
            dropped.append({"item_id": item_id, "path": str(path), "reason": str(error)})
    if dropped:
        log.warning("dropped the images of %d item(s), e.g. %s", len(dropped), dropped[0]["reason"])
    return pack(decoded, len(items), limits.size, dropped)


def pack(decoded: dict[int, np.ndarray], n_items: int, size: int, dropped: list[dict[str, str]]) -> CatalogImages:
    """Stack decoded images (by item index) into the channels-first array; RGB wins over grayscale."""
    channels = 3 if any(pixels.ndim == 3 for pixels in decoded.values()) else 1
    packed = np.zeros((n_items + 1, channels, size, size), dtype=np.uint8)
    has_image = np.zeros(n_items + 1, dtype=bool)
    for row, pixels in decoded.items():
        packed[row] = pixels.transpose(2, 0, 1) if pixels.ndim == 3 else pixels[None]
        has_image[row] = True
    return CatalogImages(packed, has_image, dropped)
