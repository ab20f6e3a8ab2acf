"""Evaluate stage: rank the whole catalog for every test user and decide the gate.

Run as `python -m pipelines.evaluate` (the DVC stage `evaluate`). The trained
model and a most-popular baseline rank all items except those the user has
already interacted with (train and validation), and both are scored on the
test split with Recall, NDCG, MRR, hit rate and catalog coverage at each K in
`evaluate.k`. Writes `metrics.json` and `gate.json`; a failed gate is a
result, not an error, so the stage itself succeeds and `promote` reads it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from pipelines import config, metrics
from pipelines.errors import ConfigError, DataError
from pipelines.io import atomic_path, write_json
from pipelines.model import load_bundle
from pipelines.scoring import model_top_k, popularity_top_k, user_state

log = logging.getLogger(__name__)

EVALUATION_REPORT = config.REPORTS_DIR / "evaluation.md"


def cutoffs(params: dict[str, Any]) -> list[int]:
    """Return the sorted K values of `evaluate.k`, which is one integer or a list of them."""
    value = params.get("k", 10)
    values = value if isinstance(value, list) else [value]
    if not values or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in values):
        raise ConfigError(f"params.yaml: evaluate.k is {value!r}, expected a positive integer or a list of them")
    return sorted(set(values))


def test_targets(test: pd.DataFrame, item_ids: list[str], user_ids: list[str]):
    """Test users (indices) and their target items as CSR arrays; unknown ids are an error."""
    item_index = {item_id: index + 1 for index, item_id in enumerate(item_ids)}
    user_index = {user_id: index + 1 for index, user_id in enumerate(user_ids)}
    users = test["user_id"].astype(str).map(user_index)
    items = test["item_id"].astype(str).map(item_index)
    unknown = (users.isna() | items.isna()).to_numpy()
    if unknown.any():
        row = test.iloc[int(np.flatnonzero(unknown)[0])]
        raise DataError(f"test split: user {row['user_id']!r} or item {row['item_id']!r} is unknown to the model")
    pairs = pd.DataFrame({"user": users.astype("int64"), "item": items.astype("int64")})
    pairs = pairs.drop_duplicates().sort_values(["user", "item"])
    test_users, counts = np.unique(pairs["user"].to_numpy(), return_counts=True)
    return test_users, np.r_[0, np.cumsum(counts)], pairs["item"].to_numpy()


def evaluate(model, bundle: dict[str, Any], tables: dict[str, pd.DataFrame], ks: list[int]) -> dict[str, Any]:
    """Metrics of the model and of the popularity baseline on the test split."""
    item_ids, user_ids = bundle["item_ids"], bundle["user_ids"]
    known = [tables["train"], tables["valid"]]
    state = user_state(known, item_ids, user_ids, model.history_length)
    users, indptr, indices = test_targets(tables["test"], item_ids, user_ids)
    top_model, _ = model_top_k(model, users, state, max(ks))

    item_index = {item_id: index + 1 for index, item_id in enumerate(item_ids)}
    counted = pd.concat(known)["item_id"].astype(str).map(item_index).dropna().astype("int64")
    popularity = np.bincount(counted, minlength=len(item_ids) + 1).astype(np.float64)
    top_popular = popularity_top_k(popularity, users, state, max(ks))

    results: dict[str, Any] = {"model": {}, "popularity": {}, "test_users": int(len(users))}
    for k in ks:
        results["model"].update(metrics.summary(top_model[:, :k], indptr, indices, len(item_ids), "test"))
        results["popularity"].update(metrics.summary(top_popular[:, :k], indptr, indices, len(item_ids), "test"))
    return results


def decide_gate(results: dict[str, Any], gate_params: dict[str, Any], k: int) -> dict[str, Any]:
    """Check the model against the gate thresholds; every check reports value, threshold and verdict."""
    metric = f"test_ndcg@{k}"
    lift = float(gate_params.get("min_lift_over_popularity", 0.0))
    baseline = results["popularity"][metric]
    threshold = baseline * (1.0 + lift)
    value = results["model"][metric]
    checks = [{
        "name": f"{metric} above popularity",
        "value": value,
        "threshold": threshold,
        "rule": f"model {metric} > popularity {metric} ({baseline:.4f}) x (1 + {lift})",
        "passed": bool(value > threshold),
    }]
    return {"passed": all(check["passed"] for check in checks), "checks": checks}


def render_report(results: dict[str, Any], gate: dict[str, Any]) -> str:
    """Render a short Markdown report: metrics of the model and the baseline, then the gate."""
    names = list(results["model"])
    lines = ["# Evaluation", "", f"Test users: {results['test_users']}", "",
             "| metric | model | popularity |", "|---|---|---|"]
    lines += [f"| {name} | {results['model'][name]:.4f} | {results['popularity'][name]:.4f} |" for name in names]
    lines += ["", f"## Gate: {'passed' if gate['passed'] else 'FAILED'}", "",
              "| check | value | threshold | verdict |", "|---|---|---|---|"]
    lines += [f"| {check['rule']} | {check['value']:.4f} | {check['threshold']:.4f} | "
              f"{'pass' if check['passed'] else 'FAIL'} |" for check in gate["checks"]]
    return "\n".join(lines) + "\n"


def load_tables(root) -> dict[str, pd.DataFrame]:
    tables = {}
    for name in config.SPLITS:
        path = root / config.SPLIT_DIR / f"{name}.parquet"
        if not path.is_file():
            raise DataError(f"{path}: file not found; run the split stage first")
        tables[name] = pd.read_parquet(path)
    return tables


def main() -> None:
    from pipelines.cli import run_stage

    def stage() -> None:
        params = config.section(config.load_params(), "evaluate")
        ks = cutoffs(params)
        root = config.workspace()
        model, bundle = load_bundle(root / config.CANDIDATE_DIR / "model.pt")
        results = evaluate(model, bundle, load_tables(root), ks)
        gate = decide_gate(results, params.get("gate") or {}, ks[0])
        write_json(results, root / config.METRICS_FILE)
        write_json(gate, root / config.GATE_FILE)
        report = root / EVALUATION_REPORT
        with atomic_path(report) as tmp:
            tmp.write_text(render_report(results, gate), encoding="utf-8")
        for name in ("model", "popularity"):
            log.info("%s: %s", name, ", ".join(f"{key}={value:.4f}" for key, value in results[name].items()))
        log.info("gate %s: %s", "passed" if gate["passed"] else "FAILED",
                 "; ".join(f"{c['name']}: {c['value']:.4f} vs {c['threshold']:.4f}" for c in gate["checks"]))

    run_stage("evaluate", stage)


if __name__ == "__main__":
    main()
