import pandas as pd
from PIL import Image

from pipelines.quality.images import has_images, inspect_images


def items(paths):
    return pd.DataFrame({"item_id": [f"i{n}" for n in range(len(paths))],
                         "image_path": pd.array(paths, dtype="string")})


def facts(frame, item_id):
    row = frame.set_index("item_id").loc[item_id]
    plain = {}
    for key, value in row.items():
        if pd.isna(value):
            plain[key] = None
        else:
            plain[key] = value.item() if hasattr(value, "item") else value
    return plain


def test_catalog_without_paths_has_no_images():
    assert not has_images(items([None, None]))
    assert has_images(items([None, "data/a.png"]))


def test_good_image_described(tmp_path):
    (tmp_path / "data").mkdir()
    Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / "data" / "a.png")
    row = facts(inspect_images(items(["data/a.png"]), tmp_path, "data"), "i0")
    assert row == {"image_path": "data/a.png", "inside_folder": True, "exists": True, "decodes": True,
                   "mode": "RGB", "width": 40, "height": 30}


def test_each_fault_fails_one_fact(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "outside.png").write_bytes(b"")
    (data / "escape.png").symlink_to(tmp_path / "outside.png")
    frame = inspect_images(items(["data/missing.png", "data/broken.png", "data/../outside.png",
                                  "data/escape.png", "/etc/hostname", None]), tmp_path, "data")
    assert facts(frame, "i0")["exists"] is False
    assert facts(frame, "i0")["decodes"] is None
    assert facts(frame, "i1")["decodes"] is False
    assert facts(frame, "i1")["mode"] is None
    for item_id in ("i2", "i3", "i4"):
        assert facts(frame, item_id)["inside_folder"] is False, item_id
        assert facts(frame, item_id)["exists"] is None, item_id
    assert facts(frame, "i5") == {"image_path": None, "inside_folder": None, "exists": None, "decodes": None,
                                  "mode": None, "width": None, "height": None}
