import gzip
import struct

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines import config, fashion, ingest
from pipelines.errors import ConfigError, DataError

HAS_FASHION_MNIST = (fashion.DEFAULT_SOURCE / fashion.IMAGES_FILE).is_file()
needs_fashion_mnist = pytest.mark.skipif(
    not HAS_FASHION_MNIST, reason="Debian package dataset-fashion-mnist not installed (make setup installs it as root)")


def write_idx(path, array, magic):
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())
    return path


def test_idx_round_trip(tmp_path):
    images = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    path = write_idx(tmp_path / "images.gz", images, fashion.IMAGES_MAGIC)
    assert np.array_equal(fashion.read_idx(path, fashion.IMAGES_MAGIC), images)


def test_idx_wrong_magic_rejected(tmp_path):
    path = write_idx(tmp_path / "labels.gz", np.arange(5), fashion.LABELS_MAGIC)
    with pytest.raises(DataError, match=r"labels\.gz: not an IDX file of magic number 0x00000803"):
        fashion.read_idx(path, fashion.IMAGES_MAGIC)


def test_idx_truncated_rejected(tmp_path):
    path = write_idx(tmp_path / "images.gz", np.zeros((4, 3, 3)), fashion.IMAGES_MAGIC)
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:-5]))
    with pytest.raises(DataError, match=r"images\.gz: header gives shape \(4, 3, 3\), but the file contains 31 data bytes"):
        fashion.read_idx(path, fashion.IMAGES_MAGIC)


def test_missing_package_named(tmp_path):
    with pytest.raises(DataError, match=r"Fashion-MNIST not found: .*train-images-idx3-ubyte\.gz does not exist\. "
                                         r"Install the Debian package dataset-fashion-mnist"):
        fashion.read_fashion_mnist(tmp_path)


@pytest.mark.parametrize("params, pattern", [
    ({"shoppers": 0}, r"ingest\.fashion_shop\.shoppers is 0"),
    ({"style_tolerance": -1}, r"ingest\.fashion_shop\.style_tolerance is -1"),
    ({"seed": "x"}, r"ingest\.fashion_shop\.seed is 'x'"),
])
def test_bad_simulator_params_rejected(params, pattern):
    with pytest.raises(ConfigError, match=pattern):
        fashion.simulator_params(params)


def test_style_axes_measure_tone_and_texture():
    dark, light, striped = (np.zeros((28, 28), np.uint8) for _ in range(3))
    dark[4:24, 4:24] = 60
    light[4:24, 4:24] = 220
    striped[4:24, 4:24] = 140
    striped[4:24:2, 4:24] = 230
    styles = fashion.style_coordinates(np.stack([dark, light, striped]))
    assert styles[:, 0].tolist() == [0.0, 1.0, 0.5]
    assert styles[2, 1] == 1.0


def synthetic_catalog(products=400, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, len(fashion.CATEGORIES), products), rng.uniform(0, 1, (products, 2))


def simulate(seed=1, concentration=0.3, shoppers=60):
    categories, styles = synthetic_catalog()
    params = fashion.SimulatorParams(shoppers=shoppers, interactions_per_shopper=20,
                                     category_concentration=concentration, style_tolerance=0.15, seed=seed)
    return fashion.simulate_interactions(categories, styles, params), categories, styles


def test_simulator_follows_seed():
    first, second, other = simulate(1)[0], simulate(1)[0], simulate(2)[0]
    assert first.equals(second)
    assert not first.equals(other)


def test_simulated_shoppers_interact_over_time():
    log, _, _ = simulate()
    assert log.groupby("shopper").size().min() >= fashion.MIN_INTERACTIONS
    assert not log.duplicated(["shopper", "product"]).any()
    assert (log.groupby("shopper")["timestamp"].diff().dropna() >= 0).all()
    assert log["timestamp"].min() >= fashion.SIMULATION_START


def test_simulated_shoppers_prefer_categories_and_styles():
    log, categories, styles = simulate(concentration=0.2)
    log["category"] = categories[log["product"]]
    top_share = log.groupby("shopper")["category"].agg(lambda values: values.value_counts().iloc[0] / len(values))
    # Ten categories chosen at random would give a top share near 0.2 for 20 interactions.
    assert top_share.mean() > 0.4
    picked = styles[log["product"].to_numpy()]
    spread_within = np.mean([picked[log["shopper"].to_numpy() == shopper].std(axis=0).mean()
                             for shopper in log["shopper"].unique()])
    assert spread_within < styles.std(axis=0).mean() * 0.7


@needs_fashion_mnist
def test_fashion_shop_ingest_writes_images(workspace):
    params = {"dataset": "fashion-shop", "fashion_shop": {"products": 40, "shoppers": 12, "seed": 3}}
    tables, images = ingest.ingest_with_images(params)
    items = tables["items"]
    assert len(items) == 40
    assert set(items["categories"]) <= set(fashion.CATEGORIES)
    assert set(tables["interactions"]["item_id"]) <= set(items["item_id"])
    assert tables["interactions"]["rating"].eq(1.0).all()
    ingest.write_outputs(tables, images, workspace)
    written = pd.read_parquet(workspace / config.INGESTED_DIR / "items.parquet")
    first = written.iloc[0]
    assert first["image_path"] == f"data/ingested/images/{first['item_id']}.png"
    with Image.open(workspace / first["image_path"]) as image:
        assert image.mode == "L"
        assert image.size == (28, 28)
        assert np.array_equal(np.asarray(image), images[first["item_id"]])


@needs_fashion_mnist
def test_fashion_shop_catalog_size_checked():
    with pytest.raises(ConfigError, match=r"ingest\.fashion_shop\.products is 70000, expected an integer from 5 to 60000"):
        ingest.ingest_with_images({"dataset": "fashion-shop", "fashion_shop": {"products": 70000}})


def test_switching_dataset_removes_old_images(workspace):
    images_dir = workspace / ingest.IMAGES_DIR
    images_dir.mkdir(parents=True)
    (images_dir / "old.png").write_bytes(b"x")
    tables = {"interactions": pd.DataFrame({"user_id": ["u"], "item_id": ["a"], "timestamp": [1], "rating": [1.0]}),
              "items": pd.DataFrame({"item_id": ["a"]}), "users": pd.DataFrame({"user_id": ["u"]})}
    ingest.write_outputs(tables, {}, workspace)
    assert not images_dir.exists()
