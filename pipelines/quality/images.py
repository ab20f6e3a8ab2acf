"""Facts about the item image files, one row per item, for the `images` suite to judge.

Each fact is null when an earlier fact already failed: a path outside the
folder has no `exists`, and a file that does not decode has no `mode`. GE
skips nulls, so every broken image fails exactly one check, the first one it
breaks.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

IMAGE_COLUMNS = ("item_id", "image_path", "inside_folder", "exists", "decodes", "mode", "width", "height")


def has_images(items: pd.DataFrame) -> bool:
    """Return whether the catalog names at least one image file."""
    return "image_path" in items.columns and bool(items["image_path"].notna().any())


def inspect_images(items: pd.DataFrame, root: Path, folder: str) -> pd.DataFrame:
    """Open every item's image and record where it is, whether it decodes, its mode and its size.

    Paths are relative to the workspace `root` and must resolve, after following
    `..` and symbolic links, inside `root / folder`.
    """
    allowed = (Path(root) / folder).resolve()
    rows = [_inspect_one(item_id, path, Path(root), allowed)
            for item_id, path in zip(items["item_id"], items["image_path"])]
    frame = pd.DataFrame(rows, columns=list(IMAGE_COLUMNS))
    for column in ("inside_folder", "exists", "decodes"):
        frame[column] = frame[column].astype("boolean")
    for column in ("width", "height"):
        frame[column] = frame[column].astype("Int64")
    for column in ("item_id", "image_path", "mode"):
        frame[column] = frame[column].astype("string")
    return frame


def _inspect_one(item_id: str, image_path, root: Path, allowed: Path) -> tuple:
    if pd.isna(image_path) or not str(image_path).strip():
        return (item_id, None, None, None, None, None, None, None)
    path = (root / str(image_path)).resolve()
    if not path.is_relative_to(allowed):
        return (item_id, image_path, False, None, None, None, None, None)
    if not path.is_file():
        return (item_id, image_path, True, False, None, None, None, None)
    decoded = _decode(path)
    if decoded is None:
        return (item_id, image_path, True, True, False, None, None, None)
    mode, (width, height) = decoded
    return (item_id, image_path, True, True, True, mode, width, height)


def _decode(path: Path) -> tuple[str, tuple[int, int]] | None:
    """Return the mode and size of a fully decoded image, or None when it does not decode.

    Pillow refuses images above twice its MAX_IMAGE_PIXELS (about 179 million
    pixels) with DecompressionBombError; such an image counts as not decoding.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # A very large image is the size check's business, not a decoding failure.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return image.mode, image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
