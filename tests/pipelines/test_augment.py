import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipelines import augment, config
from pipelines.errors import ConfigError, DataError
from pipelines.model import TwoTower
from tests.conftest import REPO


def only(name, **settings):
    """The policy with one image transform at p = 1 and every other one off."""
    transforms = {transform: {"p": 0.0} for transform in augment.IMAGE_TRANSFORMS}
    transforms[name] = {"p": 1.0, **settings}
    return augment.check_policy({"seed": 3, "image_augmentation": transforms})


def apply(policy, images, seed=0):
    transforms = augment.image_transforms(policy["image_augmentation"], images.shape[1], images.shape[2])
    return augment.augment_images(transforms, images, seed)


def articles(channels=1):
    """A batch of asymmetric 'articles' on a black background: an L shape with a gradient."""
    torch.manual_seed(0)
    images = torch.zeros(4, channels, 28, 28)
    images[:, :, 4:24, 6:11] = torch.linspace(0.3, 0.9, 20).view(1, 1, 20, 1)
    images[:, :, 19:24, 6:22] = 0.6
    return images + torch.rand(4, channels, 28, 28) * 0.05


def assert_shape_and_range(output, images):
    assert output.shape == images.shape
    assert output.min() >= 0.0
    assert output.max() <= 1.0


def test_horizontal_flip_mirrors_columns():
    images = articles()
    output = apply(only("horizontal_flip"), images)
    assert_shape_and_range(output, images)
    assert torch.allclose(output, images.flip(3))


def test_vertical_flip_mirrors_rows():
    images = articles()
    output = apply(only("vertical_flip"), images)
    assert_shape_and_range(output, images)
    assert torch.allclose(output, images.flip(2))


def test_rotation_turns_the_article():
    images = articles()
    output = apply(only("rotation", degrees=30), images)
    assert_shape_and_range(output, images)
    assert not torch.allclose(output, images, atol=0.05)
    # A turn about the centre moves pixels but keeps most of the article inside the frame.
    assert output.sum() == pytest.approx(images.sum(), rel=0.25)


def test_resized_crop_magnifies():
    ramp = torch.linspace(0.0, 1.0, 28).view(1, 1, 1, 28).expand(4, 1, 28, 28).contiguous()
    output = apply(only("resized_crop", scale=[0.3, 0.5], ratio=[0.8, 1.25]), ramp)
    assert_shape_and_range(output, ramp)
    spans = output[:, 0, 14, -1] - output[:, 0, 14, 0]
    # The crop is at most sqrt(0.5 x 1.25) of the width, so the ramp spans less of the range.
    assert (spans < 0.85).all()
    assert (output[:, 0, 14, 1:] >= output[:, 0, 14, :-1] - 1e-6).all()


def test_brightness_shifts_up():
    images = articles()
    output = apply(only("brightness", range=[1.3, 1.3]), images)
    assert_shape_and_range(output, images)
    assert (output >= images - 1e-6).all()
    assert output.mean() > images.mean() + 0.2


def test_contrast_lowers_spread():
    images = articles()
    output = apply(only("contrast", range=[0.5, 0.5]), images)
    assert_shape_and_range(output, images)
    assert output.std() < images.std() * 0.75


def test_saturation_zero_makes_gray():
    images = articles(channels=3)
    images[:, 0] *= 0.3
    output = apply(only("saturation", range=[0.0, 0.0]), images)
    assert_shape_and_range(output, images)
    assert torch.allclose(output[:, 0], output[:, 1], atol=1e-3)
    assert torch.allclose(output[:, 1], output[:, 2], atol=1e-3)


def test_saturation_skipped_for_grayscale():
    policy = only("saturation", range=[0.0, 0.0])
    assert len(augment.image_transforms(policy["image_augmentation"], 1, 28)) == 0
    assert len(augment.image_transforms(policy["image_augmentation"], 3, 28)) == 1


def test_probability_picks_a_share():
    images = articles().repeat(50, 1, 1, 1)
    policy = only("horizontal_flip")
    policy["image_augmentation"]["horizontal_flip"]["p"] = 0.5
    output = apply(policy, images)
    flipped = torch.tensor([torch.allclose(after, before.flip(2)) for after, before in zip(output, images)])
    unchanged = torch.tensor([torch.allclose(after, before) for after, before in zip(output, images)])
    assert (flipped ^ unchanged).all()
    assert 60 <= int(flipped.sum()) <= 140


def test_disabled_policy_has_no_transforms():
    policy = augment.check_policy({"image_augmentation": {"enabled": False, "rotation": {"p": 1.0, "degrees": 5}}})
    assert len(augment.image_transforms(policy["image_augmentation"], 1, 28)) == 0


def default_policy():
    return augment.check_policy(config.section(config.load_params(REPO / "params.yaml"), "augment"))


def test_same_seed_same_batch():
    images = articles()
    policy = default_policy()
    first, second = augment.ImageAugmenter(policy, 1, 28), augment.ImageAugmenter(policy, 1, 28)
    batches = [first(images), first(images)]
    assert torch.equal(batches[0], second(images))
    assert torch.equal(batches[1], second(images))
    assert not torch.equal(batches[0], batches[1])


def test_augmentation_leaves_global_random_state():
    images, augmenter = articles(), augment.ImageAugmenter(default_policy(), 1, 28)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    augmenter(images)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("params, pattern", [
    ({"seed": -1}, r"augment\.seed is -1"),
    ({"image_augmentation": {"rotation": {"p": 1.5}}}, r"augment\.image_augmentation\.rotation\.p is 1\.5"),
    ({"image_augmentation": {"brightness": {"p": 0.5, "range": [1.2, 0.8]}}},
     r"augment\.image_augmentation\.brightness\.range is \[1\.2, 0\.8\], expected low <= high"),
    ({"image_augmentation": {"resized_crop": {"p": 0.5, "scale": [0.5, 1.5]}}},
     r"augment\.image_augmentation\.resized_crop\.scale is 1\.5"),
    ({"feature_augmentation": {"negatives": {"sampler": "hard"}}},
     r"negatives\.sampler is 'hard', expected one of: uniform, popularity"),
    ({"feature_augmentation": {"mask_items": {"enabled": "yes"}}}, r"mask_items\.enabled is 'yes', expected true or false"),
    ({"feature_augmentation": {"history_crop": {"min_length": 0}}}, r"history_crop\.min_length is 0"),
])
def test_bad_policy_rejected(params, pattern):
    with pytest.raises(ConfigError, match=pattern):
        augment.check_policy(params)


# ---------------------------------------------------------------- feature augmentation

HISTORY = torch.tensor([[0, 0, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6], [0, 0, 0, 0, 0, 9]])


def test_history_crop_keeps_newest():
    torch.manual_seed(0)
    cropped = augment.crop_histories(HISTORY, p=1.0, min_length=2)
    assert torch.equal(cropped[:, -2:], HISTORY[:, -2:])
    for row, original in zip(cropped, HISTORY):
        kept = row[row > 0]
        assert torch.equal(kept, original[-len(kept):][original[-len(kept):] > 0])


def test_history_crop_shortens():
    torch.manual_seed(0)
    cropped = augment.crop_histories(HISTORY[1:2].repeat(50, 1), p=1.0, min_length=1)
    lengths = (cropped > 0).sum(dim=1)
    assert lengths.min() >= 1
    assert lengths.float().mean() < 5


def test_history_crop_off_at_zero():
    assert torch.equal(augment.crop_histories(HISTORY, p=0.0, min_length=2), HISTORY)


def test_history_dropout_keeps_order():
    torch.manual_seed(1)
    dropped = augment.drop_history_items(HISTORY, p=0.5)
    for row, original in zip(dropped, HISTORY):
        kept = row[row > 0]
        assert row[-1] == original[-1]
        assert torch.equal(row[-len(kept):], kept)
        positions = [original.tolist().index(item) for item in kept.tolist()]
        assert positions == sorted(positions)


def test_history_dropout_all_leaves_newest():
    dropped = augment.drop_history_items(HISTORY, p=1.0)
    assert dropped[:, :-1].eq(0).all()
    assert torch.equal(dropped[:, -1], HISTORY[:, -1])


def feature_policy(sampler="uniform"):
    return augment.check_policy({"feature_augmentation": {"negatives": {"sampler": sampler}}})["feature_augmentation"]


def test_uniform_negatives_skip_held_out_items():
    known = np.array([False, True, False, True, True])
    sampler = augment.FeatureAugmenter(feature_policy(), 4, known, np.ones(5))
    torch.manual_seed(0)
    negatives = sampler.negatives(2000, torch.device("cpu"))
    assert set(negatives.tolist()) == {1, 3, 4}


def test_popularity_negatives_follow_counts():
    popularity = np.array([0.0, 100.0, 1.0, 0.0, 10.0])
    sampler = augment.FeatureAugmenter(feature_policy("popularity"), 4, None, popularity)
    torch.manual_seed(0)
    counts = np.bincount(sampler.negatives(5000, torch.device("cpu")).numpy(), minlength=5)
    assert counts[0] == 0
    assert counts[3] == 0
    assert counts[1] > counts[4] > counts[2] > 0


def test_default_negatives_match_plain_uniform():
    sampler = augment.FeatureAugmenter(feature_policy(), 9, None, np.ones(10))
    torch.manual_seed(4)
    expected = torch.randint(1, 10, (50,))
    torch.manual_seed(4)
    assert torch.equal(sampler.negatives(50, torch.device("cpu")), expected)


def test_no_negative_left_rejected():
    with pytest.raises(DataError, match=r"no item can be sampled as a negative with the popularity sampler"):
        augment.FeatureAugmenter(feature_policy("popularity"), 2, None, np.zeros(3))


def test_attach_sets_model_hooks():
    images = torch.randint(0, 255, (4, 1, 12, 12), dtype=torch.uint8)
    policy = augment.check_policy({"feature_augmentation": {"mask_items": {"enabled": True, "id": 0.3}}})
    model = TwoTower(3, 2, torch.zeros(4, 1, dtype=torch.long), torch.zeros(4, dtype=torch.long), 8, 3, 0.0,
                     item_images=images)
    augment.attach(model, {}, policy)
    assert isinstance(model.image_augmentation, augment.ImageAugmenter)
    assert model.item_masking == (0.3, 0.0)
    plain = TwoTower(3, 2, torch.zeros(4, 1, dtype=torch.long), torch.zeros(4, dtype=torch.long), 8, 3, 0.0)
    augment.attach(plain, {}, policy)
    assert plain.image_augmentation is None


# ---------------------------------------------------------------- stage


def fashion_workspace(root, bad_image=None):
    """A workspace with three items with PNG images, a train split and one held-out item."""
    folder = root / "pictures"
    folder.mkdir()
    paths = []
    for number in range(3):
        path = folder / f"p{number}.png"
        Image.fromarray(np.full((20, 16), 40 * (number + 1), dtype=np.uint8)).save(path)
        paths.append(f"pictures/p{number}.png")
    if bad_image:
        (folder / "p1.png").write_bytes(b"not a png")
    ingested, split_dir = root / config.INGESTED_DIR, root / config.SPLIT_DIR
    ingested.mkdir(parents=True)
    split_dir.mkdir(parents=True)
    pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["A", "B", "C"], "categories": ["x", "y", "x"],
                  "release_year": pd.array([None] * 3, dtype="Int64"),
                  "image_path": paths}).to_parquet(ingested / "items.parquet")
    frame = pd.DataFrame({"user_id": ["u", "u", "v"], "item_id": ["a", "b", "a"], "timestamp": [1, 2, 3],
                          "rating": 1.0})
    frame.to_parquet(split_dir / "train.parquet")
    frame.iloc[:1].assign(item_id="c").to_parquet(split_dir / "coldstart.parquet")


def test_stage_packs_images_and_policy(workspace):
    fashion_workspace(workspace)
    result = augment.augment(workspace, config.section(config.load_params(), "augment"))
    assert result["images"]["packed"] == 3
    assert result["coldstart_items"] == 1
    with np.load(workspace / augment.CATALOG_FILE) as stored:
        assert stored["images"].shape == (4, 1, 28, 28)
        assert stored["item_known"].tolist() == [True, True, True, False]
        assert stored["popularity"].tolist() == [0.0, 2.0, 1.0, 0.0]
    assert json.loads((workspace / augment.POLICY_FILE).read_text())["seed"] == 7
    assert Image.open(workspace / augment.SAMPLES_FILE).format == "PNG"


def test_stage_drops_bad_image_when_asked(workspace):
    fashion_workspace(workspace, bad_image=True)
    params = config.section(config.load_params(), "augment")
    params["images"]["on_error"] = "drop"
    result = augment.augment(workspace, params)
    assert result["images"]["packed"] == 2
    assert result["images"]["dropped"] == 1
    assert result["images"]["dropped_items"][0]["item_id"] == "b"


def test_stage_bad_image_fails_cleanly(workspace):
    fashion_workspace(workspace, bad_image=True)
    env = {**os.environ, "SHOPREC_WORKSPACE": str(workspace)}
    result = subprocess.run([sys.executable, "-m", "pipelines.augment"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "augment stage failed: item 'b': image" in result.stderr
    assert "p1.png cannot be decoded" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (workspace / augment.AUGMENT_DIR).exists()


def test_training_inputs_reject_other_catalog(workspace):
    fashion_workspace(workspace)
    augment.augment(workspace, config.section(config.load_params(), "augment"))
    inputs = augment.load_training_inputs(workspace, ["a", "b", "c"])
    assert inputs["item_images"].shape == (4, 1, 28, 28)
    assert inputs["item_known"].tolist() == [True, True, True, False]
    with pytest.raises(DataError, match=r"catalog\.npz: its items differ"):
        augment.load_training_inputs(workspace, ["a", "b", "z"])


def test_training_inputs_reject_damaged_file(workspace):
    fashion_workspace(workspace)
    augment.augment(workspace, config.section(config.load_params(), "augment"))
    path = workspace / augment.CATALOG_FILE
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match=r"catalog\.npz: cannot be read .*rerun the augment stage"):
        augment.load_training_inputs(workspace, ["a", "b", "c"])


def test_catalog_without_images_turns_image_path_off(workspace, caplog):
    fashion_workspace(workspace)
    items_path = workspace / config.INGESTED_DIR / "items.parquet"
    pd.read_parquet(items_path).assign(image_path=pd.NA).astype({"image_path": "string"}).to_parquet(items_path)
    result = augment.augment(workspace, config.section(config.load_params(), "augment"))
    assert result["images"]["image_path"] == "off"
    assert Image.open(workspace / augment.SAMPLES_FILE).format == "PNG"
    with caplog.at_level("INFO", logger="pipelines.augment"):
        inputs = augment.load_training_inputs(workspace, ["a", "b", "c"])
    assert inputs["item_images"] is None
    assert "image path off" in caplog.text
