import os
import subprocess
import sys

import pandas as pd
import pytest

from pipelines import config, ingest
from pipelines.errors import DataError
from tests.conftest import REPO, update_params


def test_movielens_tables_follow_contract(movielens_tables):
    interactions = movielens_tables["interactions"]
    items = movielens_tables["items"]
    users = movielens_tables["users"]
    assert len(interactions) == 100_000
    assert len(items) == 1682
    assert len(users) == 943
    assert list(interactions.columns) == ["user_id", "item_id", "timestamp", "rating"]
    assert list(items.columns) == ["item_id", "title", "categories", "release_year", "image_path"]
    assert interactions["timestamp"].dtype == "int64"
    assert interactions["rating"].between(1, 5).all()
    toy_story = items.set_index("item_id").loc["1"]
    assert toy_story["title"] == "Toy Story"
    assert toy_story["categories"] == "Animation|Children's|Comedy"
    assert toy_story["release_year"] == 1995


def test_movielens_year_taken_from_title(movielens_tables):
    items = movielens_tables["items"].set_index("item_id")
    assert items.loc["1412", "release_year"] == 1995


def write_files(root, interactions_text, items_text="item_id,name\nA,Shirt\nB,Shoe\n"):
    (root / "inter.csv").write_text(interactions_text, encoding="utf-8")
    (root / "items.csv").write_text(items_text, encoding="utf-8")
    update_params(root, {
        "ingest.dataset": "files",
        "ingest.files": {"interactions": "inter.csv", "items": "items.csv", "users": ""},
        "ingest.columns": {"interactions": {"user_id": "customer", "item_id": "sku", "timestamp": "ts"},
                           "items": {"title": "name"}},
    })


def run_ingest(root):
    env = {**os.environ, "SHOPREC_WORKSPACE": str(root)}
    return subprocess.run([sys.executable, "-m", "pipelines.ingest"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_files_source_maps_columns(workspace):
    write_files(workspace, "customer,sku,ts\n1,A,2024-01-02T10:00:00Z\n2,B,1704189600\n")
    tables = ingest.ingest(config.section(config.load_params(), "ingest"))
    interactions = tables["interactions"]
    assert interactions["user_id"].tolist() == ["1", "2"]
    assert interactions["timestamp"].tolist() == [1704189600, 1704189600]
    assert interactions["rating"].tolist() == [1.0, 1.0]
    assert tables["items"]["title"].tolist() == ["Shirt", "Shoe"]
    assert sorted(tables["users"]["user_id"]) == ["1", "2"]


def test_files_source_reads_parquet(workspace):
    pd.DataFrame({"customer": [7], "sku": ["A"], "ts": [1704189600]}).to_parquet(workspace / "inter.parquet")
    write_files(workspace, "unused")
    update_params(workspace, {"ingest.files.interactions": "inter.parquet"})
    tables = ingest.ingest(config.section(config.load_params(), "ingest"))
    assert tables["interactions"]["user_id"].tolist() == ["7"]


BAD_INTERACTIONS = {
    "missing column": ("customer,item,ts\n1,A,1704189600\n", r"inter\.csv: column 'sku' \(contract column 'interactions\.item_id'\) not found"),
    "null id": ("customer,sku,ts\n1,A,1704189600\n,B,1704189600\n", r"inter\.csv: column 'user_id' has 1 null id\(s\); first at row 2"),
    "bad timestamp": ("customer,sku,ts\n1,A,1704189600\n2,B,yesterday\n", r"inter\.csv: column 'timestamp' row 2: cannot parse timestamp 'yesterday'"),
    "header only": ("customer,sku,ts\n", r"inter\.csv: file has a header but no rows"),
    "empty": ("", r"inter\.csv: file is empty"),
}


@pytest.mark.parametrize("case", list(BAD_INTERACTIONS))
def test_bad_interactions_rejected(workspace, case):
    text, pattern = BAD_INTERACTIONS[case]
    write_files(workspace, text)
    with pytest.raises(DataError, match=pattern):
        ingest.ingest(config.section(config.load_params(), "ingest"))


def test_missing_file_rejected(workspace):
    write_files(workspace, "customer,sku,ts\n1,A,1\n")
    (workspace / "inter.csv").unlink()
    with pytest.raises(DataError, match=r"inter\.csv: file not found"):
        ingest.ingest(config.section(config.load_params(), "ingest"))


def test_non_utf8_csv_rejected(workspace):
    write_files(workspace, "x")
    (workspace / "inter.csv").write_bytes("customer,sku,ts\n1,Café,1\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"inter\.csv: not valid UTF-8 at byte \d+"):
        ingest.ingest(config.section(config.load_params(), "ingest"))


def test_truncated_parquet_rejected(workspace):
    pd.DataFrame({"customer": range(100), "sku": ["A"] * 100, "ts": [1] * 100}).to_parquet(workspace / "inter.parquet")
    data = (workspace / "inter.parquet").read_bytes()
    (workspace / "inter.parquet").write_bytes(data[: len(data) // 2])
    write_files(workspace, "unused")
    update_params(workspace, {"ingest.files.interactions": "inter.parquet"})
    with pytest.raises(DataError, match=r"inter\.parquet: cannot be read as Parquet"):
        ingest.ingest(config.section(config.load_params(), "ingest"))


def test_stage_failure_leaves_no_tables(workspace):
    write_files(workspace, "customer,sku,ts\n1,A,1704189600\n2,B,not-a-date\n")
    result = run_ingest(workspace)
    assert result.returncode == 1
    assert "ingest stage failed" in result.stderr
    assert "cannot parse timestamp 'not-a-date'" in result.stderr
    assert "Traceback" not in result.stderr
    output = workspace / config.INGESTED_DIR
    assert not output.exists() or list(output.iterdir()) == []


def test_stage_writes_three_tables(workspace):
    write_files(workspace, "customer,sku,ts\n1,A,1704189600\n2,B,1704189601\n")
    result = run_ingest(workspace)
    assert result.returncode == 0, result.stderr
    written = sorted(path.name for path in (workspace / config.INGESTED_DIR).iterdir())
    assert written == ["interactions.parquet", "items.parquet", "users.parquet"]
