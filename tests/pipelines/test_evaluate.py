import json

import numpy as np
import pandas as pd
import pytest

from pipelines import config, evaluate
from pipelines.errors import ConfigError, DataError, RegistryError
from tests.factories import save_model, synthetic_tables

PARAMS = {
    "k": [5, 10],
    "baselines": {"knn_neighbours": 10, "ease_l2": 10.0, "max_items": 1000},
    "slices": {"new_user_max_interactions": 5, "head_share": 0.5, "torso_share": 0.3},
    "bootstrap": {"resamples": 200, "confidence": 0.95, "seed": 0},
    "latency_requests": 20,
    "gate": {"metric": "test_ndcg@10", "min_lift_over_popularity": 0.0, "floors": {},
             "champion": {"tolerance": 0.005, "require_improvement": True}, "slice_tolerance": {"default": 0.05},
             "min_slice_users": 30, "max_model_size_mb": 50, "max_latency_p95_ms": 1000},
}


@pytest.mark.parametrize("value", [0, -1, "ten", [10, 0], []])
def test_bad_cutoffs_rejected(value):
    with pytest.raises(ConfigError, match=r"evaluate\.k is"):
        evaluate.cutoffs({"k": value})


def test_cutoffs_sorted():
    assert evaluate.cutoffs({"k": [20, 10]}) == [10, 20]


def test_targets_grouped_per_user():
    test = pd.DataFrame({"user_id": ["v", "u", "v"], "item_id": ["b", "a", "c"]})
    users, indptr, indices = evaluate.test_targets(test, ["a", "b", "c"], ["u", "v"])
    assert users.tolist() == [1, 2]
    assert indptr.tolist() == [0, 1, 3]
    assert indices.tolist() == [1, 2, 3]


def test_targets_unknown_item_rejected():
    test = pd.DataFrame({"user_id": ["u"], "item_id": ["zzz"]})
    with pytest.raises(DataError, match=r"item 'zzz' is unknown to the model"):
        evaluate.test_targets(test, ["a"], ["u"])


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Zipf-distributed interactions, a most-popular model and a random model saved for them."""
    folder = tmp_path_factory.mktemp("models")
    tables = synthetic_tables()
    return {"tables": tables, "popular": save_model(tables, folder / "popular.pt", popular=True),
            "random": save_model(tables, folder / "random.pt", seed=3)}


def test_evaluation_scores_every_system(synthetic):
    results = evaluate.evaluate_candidate(synthetic["popular"], synthetic["tables"], PARAMS)
    assert list(results["systems"]) == ["model", "popularity", "item_knn", "ease"]
    assert results["test_users"] == 300
    assert results["production_version"] is None
    for name in ("recall", "ndcg", "mrr", "hit_rate", "coverage", "popularity_bias"):
        for k in (5, 10):
            assert f"test_{name}@{k}" in results["systems"]["ease"]
    interval = results["intervals"]["model"]["test_ndcg@10"]
    assert interval["low"] < results["systems"]["model"]["test_ndcg@10"] < interval["high"]
    assert set(results["slices"]) >= {"users:new", "users:active", "items:head", "items:torso", "items:tail"}
    assert len(results["ndcg_curve"]["ease"]) == 10


def test_popular_model_matches_popularity_baseline(synthetic):
    results = evaluate.evaluate_candidate(synthetic["popular"], synthetic["tables"], PARAMS)
    # The crafted model scores log(1 + training count); the baseline counts training and validation.
    assert results["systems"]["model"]["test_ndcg@10"] == pytest.approx(
        results["systems"]["popularity"]["test_ndcg@10"], abs=0.02)


def test_gate_rejects_worse_candidate(synthetic):
    production = {"version": "v0001", "path": synthetic["popular"]}
    results, decision = evaluate.judge(synthetic["random"], synthetic["tables"], PARAMS, production)
    check = next(entry for entry in decision["checks"] if entry["name"] == "test_ndcg@10 against production")
    assert results["difference"]["test_ndcg@10"]["high"] < 0
    assert check["verdict"] == "fail"
    assert decision["passed"] is False


def test_gate_accepts_better_candidate(synthetic):
    production = {"version": "v0001", "path": synthetic["random"]}
    results, decision = evaluate.judge(synthetic["popular"], synthetic["tables"], PARAMS, production)
    champion = [entry for entry in decision["checks"] if entry["name"].startswith("test_ndcg@10 against production")
                or entry["name"] == "test_ndcg@10 improvement is significant"]
    assert results["difference"]["test_ndcg@10"]["low"] > 0
    assert [entry["verdict"] for entry in champion] == ["pass", "pass"]


def test_better_candidate_can_lose_a_slice(synthetic):
    # The most-popular model beats a random one overall but never recommends tail items.
    production = {"version": "v0001", "path": synthetic["random"]}
    _, decision = evaluate.judge(synthetic["popular"], synthetic["tables"], PARAMS, production)
    tail = next(entry for entry in decision["checks"] if entry["name"] == "test_ndcg@10 on items:tail against production")
    assert tail["verdict"] == "fail"
    assert decision["passed"] is False


def test_production_with_older_catalog_is_scored(synthetic, tmp_path):
    # A production model trained before the newest users and items existed still ranks every test user.
    tables = synthetic["tables"]
    older = {**tables, "items": tables["items"].iloc[:-5], "users": tables["users"].iloc[:-50]}
    older["train"] = tables["train"][tables["train"]["item_id"].isin(older["items"]["item_id"])]
    production = {"version": "v0001", "path": save_model(older, tmp_path / "older.pt", popular=True)}
    results = evaluate.evaluate_candidate(synthetic["popular"], tables, PARAMS, production)
    assert results["production_version"] == "v0001"
    assert results["systems"]["production"]["test_ndcg@10"] == pytest.approx(
        results["systems"]["model"]["test_ndcg@10"], abs=0.03)


def test_k_larger_than_catalog_rejected(synthetic):
    with pytest.raises(ConfigError, match=r"evaluate\.k 100 is larger than the catalog \(60 items\)"):
        evaluate.evaluate_candidate(synthetic["popular"], synthetic["tables"], {**PARAMS, "k": [10, 100]})


def test_outputs_written(synthetic, tmp_path):
    results, decision = evaluate.judge(synthetic["popular"], synthetic["tables"], PARAMS)
    evaluate.write_outputs(tmp_path, results, decision)
    written = json.loads((tmp_path / config.METRICS_FILE).read_text())
    assert written["model"]["test_ndcg@10"] == results["systems"]["model"]["test_ndcg@10"]
    assert set(written) == {"test_users", "model", "popularity", "item_knn", "ease"}
    details = json.loads((tmp_path / evaluate.EVALUATION_FILE).read_text())
    assert {"intervals", "slices", "efficiency", "bootstrap"} <= set(details)
    assert json.loads((tmp_path / config.GATE_FILE).read_text())["passed"] == decision["passed"]
    curve = pd.read_csv(tmp_path / "reports" / "plots" / "ndcg_at_k.csv")
    assert list(curve.columns) == ["k", "model", "popularity", "item_knn", "ease"]
    assert (tmp_path / "reports" / "evaluation.html").read_text().startswith("<!DOCTYPE html>")


def test_bad_latency_requests_rejected(synthetic):
    with pytest.raises(ConfigError, match=r"evaluate\.latency_requests is 'many', expected a positive integer"):
        evaluate.evaluate_candidate(synthetic["popular"], synthetic["tables"], {**PARAMS, "latency_requests": "many"})


def test_edited_production_model_rejected(workspace):
    from pipelines import promote
    from tests.factories import PROMOTE_PARAMS, build_candidate_workspace

    root = build_candidate_workspace(workspace)
    promote.promote(root, PROMOTE_PARAMS)
    assert evaluate.production_model(root)["version"] == "v0001"
    (root / "models/registry/v0001/model.pt").write_bytes(b"replaced by hand")
    with pytest.raises(RegistryError, match=r"v0001 was changed after registration: model\.pt differs"):
        evaluate.production_model(root)


def test_no_production_model_before_first_promotion(workspace):
    assert evaluate.production_model(workspace) is None


def test_judged_model_without_compress(tmp_path):
    path, decision = evaluate.judged_model(tmp_path)
    assert path == tmp_path / "models" / "candidate" / "model.pt"
    assert decision is None


def test_judged_model_is_compress_choice(tmp_path, synthetic):
    chosen = tmp_path / "models" / "compressed" / "int8" / "model.pt"
    chosen.parent.mkdir(parents=True)
    chosen.write_bytes(synthetic["popular"].read_bytes())
    (tmp_path / config.REPORTS_DIR).mkdir()
    decision = {"chosen": "int8", "model_path": "models/compressed/int8/model.pt"}
    (tmp_path / evaluate.COMPRESS_DECISION).write_text(json.dumps(decision))
    assert evaluate.judged_model(tmp_path) == (chosen, decision)
    chosen.unlink()
    with pytest.raises(DataError, match=r"compress_decision\.json: chosen model models/compressed/int8/model\.pt not found"):
        evaluate.judged_model(tmp_path)


def test_quantized_candidate_judged(synthetic, tmp_path):
    from pipelines import compress

    quantized = tmp_path / "int8.pt"
    compress.build_quantized(synthetic["popular"], quantized, 8, {})
    trained = evaluate.evaluate_candidate(synthetic["popular"], synthetic["tables"], PARAMS)
    results = evaluate.evaluate_candidate(quantized, synthetic["tables"], PARAMS)
    assert results["efficiency"]["model"]["size_mb"] < trained["efficiency"]["model"]["size_mb"]
    assert results["systems"]["model"]["test_ndcg@10"] == pytest.approx(
        trained["systems"]["model"]["test_ndcg@10"], abs=0.02)
