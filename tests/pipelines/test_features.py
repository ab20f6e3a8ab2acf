import numpy as np
import pandas as pd
import pytest

from pipelines import features
from pipelines.errors import DataError


def test_history_windows_use_only_the_past():
    users = np.array([1, 1, 1, 2, 2])
    items = np.array([5, 6, 7, 8, 9])
    windows = features.history_windows(users, items, 2)
    assert windows.tolist() == [[0, 0], [0, 5], [5, 6], [0, 0], [0, 8]]


def test_latest_histories_per_user():
    users = np.array([1, 1, 1, 3])
    items = np.array([5, 6, 7, 4])
    histories = features.latest_histories(users, items, n_users=3, length=2)
    assert histories.tolist() == [[0, 0], [6, 7], [0, 0], [0, 4]]


def test_catalog_encodes_categories_and_years():
    items = pd.DataFrame({"item_id": ["a", "b", "c"], "categories": ["x|y", None, "y"],
                          "release_year": pd.array([1990, None, 2001], dtype="Int64")})
    catalog = features.build_catalog(items, pd.DataFrame({"user_id": ["u"]}))
    assert catalog.category_names == ["x", "y"]
    assert catalog.item_categories.tolist() == [[0, 0], [1, 2], [0, 0], [2, 0]]
    assert catalog.item_year_buckets.tolist() == [0, 1, 0, 3]


def test_encode_rejects_unknown_item():
    catalog = features.build_catalog(pd.DataFrame({"item_id": ["a"], "categories": [None], "release_year": [None]}),
                                     pd.DataFrame({"user_id": ["u"]}))
    frame = pd.DataFrame({"user_id": ["u"], "item_id": ["zzz"]})
    with pytest.raises(DataError, match=r"train split: item_id 'zzz' \(row 1\) is not in the catalog"):
        features.encode(frame, catalog, "train split")
