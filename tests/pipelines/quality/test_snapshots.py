import json

import numpy as np
import pytest

from pipelines.errors import DataError
from pipelines.quality.drift import Profile
from pipelines.quality.snapshots import SnapshotStore, safe_run_id


def profile(rows=3):
    return Profile(rows=rows, newest_timestamp=1_700_000_000, rating_edges=[1.0, 3.0, 5.0], rating_shares=[0.5, 0.5],
                   activity_edges=[1.0], activity_shares=[0.2, 0.8], user_ids=np.array(["u1", "u2"], dtype=object),
                   item_ids=np.array(["a", "b"], dtype=object), item_counts=np.array([2, 1]))


def test_first_run_has_no_snapshot(tmp_path):
    assert SnapshotStore(tmp_path).load_last_good() is None


def test_snapshot_round_trip(tmp_path):
    store = SnapshotStore(tmp_path)
    name = store.save_last_good("run 1", profile(), {"run_date": "2026-03-08"})
    assert name == "run_1"
    loaded_name, loaded = store.load_last_good()
    assert loaded_name == "run_1"
    assert loaded.rows == 3
    assert list(loaded.user_ids) == ["u1", "u2"]
    assert list(loaded.item_counts) == [2, 1]
    assert json.loads((tmp_path / "last_good.json").read_text())["run_date"] == "2026-03-08"


def test_same_run_id_gets_new_folder(tmp_path):
    store = SnapshotStore(tmp_path)
    store.save_last_good("nightly", profile(), {})
    assert store.save_last_good("nightly", profile(rows=5), {}) == "nightly-2"
    assert store.load_last_good()[1].rows == 5


def test_old_snapshots_pruned(tmp_path):
    store = SnapshotStore(tmp_path)
    for number in range(5):
        store.save_last_good(f"run{number}", profile(), {})
    assert sorted(path.name for path in store.snapshots.iterdir()) == ["run2", "run3", "run4"]


def test_damaged_snapshot_named(tmp_path):
    store = SnapshotStore(tmp_path)
    store.save_last_good("good", profile(), {})
    (store.snapshots / "good" / "items.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"snapshots/good: last good snapshot named by .* is missing or damaged"):
        store.load_last_good()


def test_quarantine_copies_tables_and_reports(tmp_path):
    tables = tmp_path / "ingested"
    tables.mkdir()
    (tables / "interactions.parquet").write_bytes(b"rows")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.html").write_text("<html/>")
    store = SnapshotStore(tmp_path / "quality")
    folder = store.quarantine("bad", tables, {"data_docs": docs, "source/interactions.csv": tmp_path / "nope.csv"},
                              {"summary.txt": "failed\n"}, keep=3)
    assert (folder / "interactions.parquet").read_bytes() == b"rows"
    assert (folder / "data_docs" / "index.html").is_file()
    assert (folder / "summary.txt").read_text() == "failed\n"
    assert not (folder / "source" / "interactions.csv").exists()


def test_run_id_made_safe():
    assert safe_run_id("manual__2026-03-08T02:00:00+00:00") == "manual__2026-03-08T02_00_00_00_00"
    assert safe_run_id("../..") == "run"
