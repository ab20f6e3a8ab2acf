import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines import images
from pipelines.errors import ConfigError, DataError

LIMITS = images.ImageLimits(size=28, min_side=8, max_side=64)


def save(path, mode="L", size=(20, 16)):
    Image.new(mode, size, color=90 if mode in ("L", "P") else None).save(path)
    return path


def test_grayscale_image_resized(tmp_path):
    pixels = images.read_image("a", save(tmp_path / "a.png"), LIMITS)
    assert pixels.shape == (28, 28)
    assert pixels.dtype == np.uint8
    assert pixels.max() == 90
    # The 20 x 16 image is wider than high, so padding adds black rows above and below.
    assert pixels[0].max() == 0
    assert pixels[:, 0].max() == 90


def test_rgb_image_keeps_colour(tmp_path):
    Image.new("RGB", (16, 16), color=(200, 10, 10)).save(tmp_path / "a.jpg")
    pixels = images.read_image("a", tmp_path / "a.jpg", LIMITS)
    assert pixels.shape == (28, 28, 3)
    assert pixels[14, 14, 0] > 150
    assert pixels[14, 14, 1] < 60


def test_missing_image_named(tmp_path):
    with pytest.raises(images.ImageError, match=r"item 'a': image .*gone\.png not found"):
        images.read_image("a", tmp_path / "gone.png", LIMITS)


def test_undecodable_image_named(tmp_path):
    (tmp_path / "a.png").write_bytes(b"this is text, not a PNG")
    with pytest.raises(images.ImageError, match=r"item 'a': image .*a\.png cannot be decoded"):
        images.read_image("a", tmp_path / "a.png", LIMITS)


def test_truncated_image_named(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "a.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(images.ImageError, match=r"item 'a': image .*a\.png cannot be decoded"):
        images.read_image("a", tmp_path / "a.png", LIMITS)


@pytest.mark.parametrize("mode, suffix", [("RGBA", "png"), ("CMYK", "jpg"), ("P", "png"), ("I;16", "tif")])
def test_wrong_mode_named(tmp_path, mode, suffix):
    path = save(tmp_path / f"a.{suffix}", mode)
    with pytest.raises(images.ImageError, match=rf"item 'a': image .*a\.{suffix} has mode {mode}, expected L"):
        images.read_image("a", path, LIMITS)


@pytest.mark.parametrize("size", [(4, 20), (100, 20)])
def test_absurd_size_named(tmp_path, size):
    path = save(tmp_path / "a.png", size=size)
    with pytest.raises(images.ImageError, match=rf"item 'a': image .*a\.png is {size[0]}x{size[1]} pixels"):
        images.read_image("a", path, LIMITS)


def catalog(tmp_path, paths):
    return pd.DataFrame({"item_id": [f"i{n}" for n in range(len(paths))], "image_path": paths})


def test_catalog_fails_on_first_bad_image(tmp_path):
    save(tmp_path / "good.png")
    items = catalog(tmp_path, ["good.png", "missing.png"])
    with pytest.raises(DataError, match=r"item 'i1': image .*missing\.png not found"):
        images.load_catalog_images(items, tmp_path, LIMITS, "fail")


def test_catalog_drop_counts_bad_images(tmp_path):
    save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"junk")
    items = catalog(tmp_path, ["good.png", "bad.png", None])
    packed = images.load_catalog_images(items, tmp_path, LIMITS, "drop")
    assert packed.count == 1
    assert packed.has_image.tolist() == [False, True, False, False]
    assert [entry["item_id"] for entry in packed.dropped] == ["i1"]
    assert "cannot be decoded" in packed.dropped[0]["reason"]
    assert packed.pixels[2].max() == 0


def test_mixed_catalog_becomes_rgb(tmp_path):
    save(tmp_path / "gray.png")
    Image.new("RGB", (16, 16), color=(10, 200, 10)).save(tmp_path / "green.png")
    packed = images.load_catalog_images(catalog(tmp_path, ["gray.png", "green.png"]), tmp_path, LIMITS)
    assert packed.pixels.shape == (3, 3, 28, 28)
    assert (packed.pixels[1, 0] == packed.pixels[1, 2]).all()
    assert packed.pixels[2, 1, 14, 14] > packed.pixels[2, 0, 14, 14]


def test_catalog_without_images_is_none(tmp_path):
    assert images.load_catalog_images(catalog(tmp_path, [None, None]), tmp_path, LIMITS) is None
    assert images.load_catalog_images(pd.DataFrame({"item_id": ["a"]}), tmp_path, LIMITS) is None


def test_bad_settings_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"augment\.images\.on_error is 'skip', expected one of: fail, drop"):
        images.load_catalog_images(catalog(tmp_path, ["a.png"]), tmp_path, LIMITS, "skip")
    with pytest.raises(ConfigError, match=r"augment\.images\.min_side \(100\) is larger"):
        images.image_limits({"min_side": 100, "max_side": 50})
    with pytest.raises(ConfigError, match=r"augment\.images\.size is 0"):
        images.image_limits({"size": 0})
