import json

import pandas as pd
import pytest
import torch

from pipelines import config, features, promote, recommend, registry
from pipelines.errors import DataError, RegistryError
from pipelines.io import write_json
from pipelines.model import build_model, save_bundle


@pytest.fixture()
def candidate_workspace(workspace):
    """A workspace with tiny ingested tables, an untrained candidate model and an evaluation."""
    interactions = pd.DataFrame({
        "user_id": ["u1", "u1", "u2", "u2", "u2"],
        "item_id": ["a", "b", "a", "c", "d"],
        "timestamp": [1, 2, 1, 2, 3],
        "rating": 1.0,
    })
    items = pd.DataFrame({"item_id": ["a", "b", "c", "d"], "title": ["Apple", "Bag", "Cap", "Dress"],
                          "categories": ["food", "bags", "hats", "clothes"],
                          "release_year": pd.array([None] * 4, dtype="Int64"), "image_path": None})
    users = pd.DataFrame({"user_id": ["u1", "u2"]})
    folder = workspace / config.INGESTED_DIR
    folder.mkdir(parents=True)
    for name, frame in (("interactions", interactions), ("items", items), ("users", users)):
        frame.to_parquet(folder / f"{name}.parquet")
    catalog = features.build_catalog(items, users)
    model_cfg = {"n_items": 4, "n_users": 2, "embedding_dim": 8, "history_length": 3, "dropout": 0.0}
    torch.manual_seed(0)
    model = build_model(model_cfg, torch.tensor(catalog.item_categories), torch.tensor(catalog.item_year_buckets))
    save_bundle(model, model_cfg, catalog.item_ids, catalog.user_ids, workspace / config.CANDIDATE_DIR / "model.pt")
    write_json({"model": {"test_ndcg@10": 0.2}, "popularity": {"test_ndcg@10": 0.1}}, workspace / config.METRICS_FILE)
    set_gate(workspace, passed=True)
    return workspace


def set_gate(root, passed):
    write_json({"passed": passed, "checks": [{"name": "test_ndcg@10 above popularity", "passed": passed,
                                              "value": 0.2, "threshold": 0.11}]}, root / config.GATE_FILE)


def test_passed_gate_promotes(candidate_workspace):
    decision = promote.promote(candidate_workspace, {"force": False})
    assert decision == {"promoted": True, "reason": "gate passed", "production": "v0001", "previous": None}
    card = registry.read_card(candidate_workspace, "v0001")
    assert card["metrics"]["model"]["test_ndcg@10"] == 0.2
    assert card["forced"] is False
    for key in ("git_revision", "data_version", "created_at", "params"):
        assert key in card, key
    assert registry.production(candidate_workspace)["version"] == "v0001"


def test_failed_gate_keeps_production(candidate_workspace):
    promote.promote(candidate_workspace, {"force": False})
    pointer_before = (candidate_workspace / config.PRODUCTION_POINTER).read_text()
    set_gate(candidate_workspace, passed=False)
    decision = promote.promote(candidate_workspace, {"force": False})
    assert decision["promoted"] is False
    assert decision["reason"] == "gate failed: test_ndcg@10 above popularity"
    assert (candidate_workspace / config.PRODUCTION_POINTER).read_text() == pointer_before
    assert registry.list_versions(candidate_workspace) == ["v0001"]


def test_forced_promotion_recorded(candidate_workspace):
    set_gate(candidate_workspace, passed=False)
    decision = promote.promote(candidate_workspace, {"force": True})
    assert decision["promoted"] is True
    assert registry.read_card(candidate_workspace, "v0001")["forced"] is True


def test_damaged_candidate_not_registered(candidate_workspace):
    (candidate_workspace / config.CANDIDATE_DIR / "model.pt").write_bytes(b"garbage")
    with pytest.raises(RegistryError, match="cannot load model"):
        promote.promote(candidate_workspace, {"force": False})
    assert registry.list_versions(candidate_workspace) == []
    assert registry.production(candidate_workspace) is None


def test_missing_gate_rejected(candidate_workspace):
    (candidate_workspace / config.GATE_FILE).unlink()
    with pytest.raises(DataError, match=r"gate\.json: file not found; run the evaluate stage first"):
        promote.promote(candidate_workspace, {"force": False})


def test_recommend_skips_seen_items(candidate_workspace):
    promote.promote(candidate_workspace, {"force": False})
    rows = recommend.recommend_for_user("u1", k=10)
    assert [row["item_id"] for row in rows] and {"a", "b"}.isdisjoint(row["item_id"] for row in rows)
    assert len(rows) == 2
    assert rows[0]["version"] == "v0001"
    assert "Cap" in recommend.format_recommendations("u1", rows) or "Dress" in recommend.format_recommendations("u1", rows)


def test_recommend_unknown_user(candidate_workspace):
    promote.promote(candidate_workspace, {"force": False})
    with pytest.raises(DataError, match=r"user 'nobody' not found in production model v0001 \(2 known users\)"):
        recommend.recommend_for_user("nobody")


def test_recommend_without_production(workspace):
    with pytest.raises(RegistryError, match=r"no production model: .*production\.json does not exist"):
        recommend.recommend_for_user("u1")


def test_cli_reports_error_without_traceback(workspace, capsys):
    from pipelines.cli import main

    assert main(["recommend", "--user", "196"]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error: no production model")
