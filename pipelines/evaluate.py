"""Evaluate stage: score the candidate, the production model and three baselines, then decide the gate.

Run as `python -m pipelines.evaluate` (the DVC stage `evaluate`). Every
system ranks the whole catalog for every test user, except the items the
user interacted with in the training and validation data:

- `model`: the candidate, which is the model promote would ship: the
  compressed model the compress stage chose (`reports/compress_decision.json`),
  or `models/candidate/model.pt` when no compress decision exists;
- `production`: the model file the production version serves, when there is one;
- `popularity`, `item_knn` and `ease`: baselines fitted on the same split.

Metrics at each K in `evaluate.k` are averaged over test users, per slice
(see `pipelines.slices`) and with bootstrap intervals (see
`pipelines.bootstrap`), and `pipelines.gate` decides whether the candidate
may replace production. Writes `metrics.json`, `gate.json`,
`reports/evaluation.json`, the reports `reports/evaluation.md` and
`reports/evaluation.html`, and plot data in `reports/plots/`. A failed gate
is a result, not an error: the stage succeeds and `promote` reads it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines import baselines, bootstrap, config, gate, metrics, registry, slices
from pipelines.errors import ConfigError, DataError
from pipelines.io import atomic_path, read_json, write_json
from pipelines.candidates import load_candidate
from pipelines.scoring import rank_with_model, time_top_k, user_state

log = logging.getLogger(__name__)

COMPRESS_DECISION = config.REPORTS_DIR / "compress_decision.json"

EVALUATION_FILE = config.REPORTS_DIR / "evaluation.json"
SPLIT = "test"
# Requests of one user each timed for the latency budget.
LATENCY_K = 10


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


class EvaluationData:
    """Test users and targets in the candidate's index space, with their training and validation history."""

    def __init__(self, bundle: dict[str, Any], tables: dict[str, pd.DataFrame], history_length: int):
        self.item_ids, self.user_ids = bundle["item_ids"], bundle["user_ids"]
        self.known = [tables["train"], tables["valid"]]
        self.state = user_state(self.known, self.item_ids, self.user_ids, history_length)
        self.users, self.indptr, self.indices = test_targets(tables["test"], self.item_ids, self.user_ids)
        matrix = baselines.interaction_matrix(self.state["seen_indptr"], self.state["seen_indices"], self.n_items)
        self.counts = baselines.item_counts(matrix)
        self.percentiles = metrics.popularity_percentiles(self.counts)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def history_sizes(self) -> np.ndarray:
        """Number of distinct items each test user interacted with in training and validation."""
        return np.diff(self.state["seen_indptr"])[self.users]


def rank_systems(model, bundle, production, data: EvaluationData, k: int,
                 baseline_params: dict[str, Any]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Top-K lists of the candidate, the production model (when given) and the baselines."""
    args = (data.known, data.item_ids, data.user_ids, data.users, k)
    rankings = {"model": rank_with_model(model, bundle, *args)}
    if production is not None:
        rankings["production"] = rank_with_model(production["model"], production["bundle"], *args)
    baseline_rankings, notes = baselines.rank_baselines(data.state, data.n_items, data.users, k,
                                                        baseline_params)
    return {**rankings, **baseline_rankings}, notes


def per_user_metrics(top_items: np.ndarray, indptr: np.ndarray, indices: np.ndarray, ks: list[int],
                     percentiles: np.ndarray) -> dict[str, np.ndarray]:
    """Compute every per-user metric at every K, named `test_<metric>@<K>`."""
    values = {}
    for k in ks:
        for name, column in metrics.per_user_metrics(top_items[:, :k], indptr, indices, percentiles).items():
            values[metrics.metric_name(SPLIT, name, k)] = column
    return values


def means(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: float(column.mean()) if len(column) else 0.0 for name, column in per_user.items()}


def slice_results(rankings: dict[str, np.ndarray], per_user: dict[str, dict[str, np.ndarray]],
                  data: EvaluationData, ks: list[int], params: dict[str, Any]) -> dict[str, Any]:
    """Mean metrics of every system per user segment and per item popularity bucket."""
    params = slices.slice_params(params)
    results = {}
    for name, mask in slices.user_segments(data.history_sizes(), params["new_user_max_interactions"]).items():
        results[name] = {"users": int(mask.sum()), "systems": {
            system: means({metric: column[mask] for metric, column in values.items()})
            for system, values in per_user.items()}}

    buckets = slices.item_buckets(data.counts, params["head_share"], params["torso_share"])
    for bucket in slices.BUCKETS:
        rows, indptr, indices = slices.restrict_targets(data.indptr, data.indices, buckets == bucket)
        if bucket == "cold" and not len(rows):
            continue  # no test target is a cold-start item
        results[f"items:{bucket}"] = {"users": int(len(rows)), "systems": {
            system: means(per_user_metrics(top[rows], indptr, indices, ks, data.percentiles))
            for system, top in rankings.items()}}
    return results


def model_efficiency(model, bundle, path: Path, data: EvaluationData, requests: int) -> dict[str, Any]:
    """Size of the model file and the latency of one user's top-10 request."""
    state = user_state(data.known, bundle["item_ids"], bundle["user_ids"], model.history_length)
    model_user_index = {user_id: index + 1 for index, user_id in enumerate(bundle["user_ids"])}
    test_user_ids = (data.user_ids[user - 1] for user in data.users)
    users = np.array([model_user_index[user_id] for user_id in test_user_ids if user_id in model_user_index],
                     dtype=np.int64)
    seconds = time_top_k(model, users, state, min(LATENCY_K, len(bundle["item_ids"])), requests)
    milliseconds = seconds * 1000 if len(seconds) else np.zeros(1)
    return {"size_mb": Path(path).stat().st_size / 1e6, "requests": int(len(seconds)),
            "latency_p50_ms": float(np.percentile(milliseconds, 50)),
            "latency_p95_ms": float(np.percentile(milliseconds, 95))}


def system_means(rankings: dict[str, np.ndarray], per_user: dict[str, dict[str, np.ndarray]], n_items: int,
                 ks: list[int]) -> dict[str, dict[str, float]]:
    """Mean of every per-user metric of each system, plus its catalog coverage at each K."""
    systems = {system: means(values) for system, values in per_user.items()}
    for system, top in rankings.items():
        for k in ks:
            systems[system][metrics.metric_name(SPLIT, "coverage", k)] = metrics.coverage_at_k(top[:, :k], n_items)
    return systems


def latency_requests(params: dict[str, Any]) -> int:
    requests = params.get("latency_requests", 200)
    if not isinstance(requests, int) or isinstance(requests, bool) or requests < 1:
        raise ConfigError(f"params.yaml: evaluate.latency_requests is {requests!r}, expected a positive integer")
    return requests


def uncertainty(per_user: dict[str, dict[str, np.ndarray]], n_users: int,
                params: dict[str, Any]) -> dict[str, Any]:
    """Bootstrap intervals of every system's metrics and of the candidate - production difference."""
    params = bootstrap.bootstrap_params(params)
    weights = bootstrap.resample_weights(n_users, params["resamples"], params["seed"])
    result = {
        "bootstrap": {key: params[key] for key in ("resamples", "confidence", "seed")},
        "intervals": {system: bootstrap.intervals(values, weights, params["confidence"])
                      for system, values in per_user.items()},
        "difference": {},
    }
    if "production" in per_user:
        result["difference"] = bootstrap.difference_intervals(per_user["model"], per_user["production"], weights,
                                                              params["confidence"])
    return result


def evaluate_candidate(candidate: Path, tables: dict[str, pd.DataFrame], params: dict[str, Any],
                       production: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate the model saved at `candidate` against `production` and the baselines on `tables`.

    `production` is {"version", "path"} of the production model, or None.
    The candidate and production may be any model file `load_candidate` reads:
    a trained model, or a pruned, quantized or distilled copy, each scored the
    way recommend serves it.
    """
    ks = cutoffs(params)
    model, bundle = load_candidate(candidate)
    if max(ks) > len(bundle["item_ids"]):
        raise ConfigError(f"params.yaml: evaluate.k {max(ks)} is larger than the catalog ({len(bundle['item_ids'])} items)")
    data = EvaluationData(bundle, tables, model.history_length)
    loaded = None
    if production is not None:
        production_model, production_bundle = load_candidate(production["path"])
        loaded = {"model": production_model, "bundle": production_bundle}
    rankings, notes = rank_systems(model, bundle, loaded, data, max(ks), params.get("baselines") or {})

    per_user = {system: per_user_metrics(top, data.indptr, data.indices, ks, data.percentiles)
                for system, top in rankings.items()}
    systems = system_means(rankings, per_user, data.n_items, ks)

    requests = latency_requests(params)
    efficiency = {"model": model_efficiency(model, bundle, candidate, data, requests)}
    if loaded is not None:
        efficiency["production"] = model_efficiency(loaded["model"], loaded["bundle"], production["path"],
                                                    data, requests)
    return {
        "test_users": int(len(data.users)),
        "ks": ks,
        "production_version": production["version"] if production else None,
        "systems": systems,
        **uncertainty(per_user, len(data.users), params.get("bootstrap") or {}),
        "slices": slice_results(rankings, per_user, data, ks, params.get("slices") or {}),
        "efficiency": efficiency,
        "ndcg_curve": {system: metrics.ndcg_curve(top, data.indptr, data.indices).tolist()
                       for system, top in rankings.items()},
        "notes": notes,
    }


def judge(candidate: Path, tables: dict[str, pd.DataFrame], params: dict[str, Any],
          production: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate the model at `candidate` and return (results, gate decision)."""
    results = evaluate_candidate(candidate, tables, params, production)
    return results, gate.decide(results, params.get("gate"))


def load_tables(root: Path) -> dict[str, pd.DataFrame]:
    tables = {}
    for name in config.SPLITS:
        path = root / config.SPLIT_DIR / f"{name}.parquet"
        if not path.is_file():
            raise DataError(f"{path}: file not found; run the split stage first")
        tables[name] = pd.read_parquet(path)
    return tables


def production_model(root: Path) -> dict[str, Any] | None:
    """Return the production version and the model file it serves, after checking its files against the model card."""
    pointer = registry.production(root)
    if pointer is None:
        return None
    folder = registry.verify_version(root, pointer["version"])
    return {"version": pointer["version"], "path": registry.served_file(folder)}


def judged_model(root: Path) -> tuple[Path, dict[str, Any] | None]:
    """Return the model file the gate judges and the compress decision that chose it (None without compress)."""
    trained = root / config.CANDIDATE_DIR / registry.MODEL_FILE
    decision_path = root / COMPRESS_DECISION
    if not decision_path.is_file():
        return trained, None
    decision = read_json(decision_path)
    chosen = decision.get("model_path") if isinstance(decision, dict) else None
    if not isinstance(chosen, str) or not chosen:
        raise DataError(f"{decision_path}: model_path of the chosen model is missing; rerun the compress stage")
    if not (root / chosen).is_file():
        raise DataError(f"{decision_path}: chosen model {chosen} not found; rerun the compress stage")
    return root / chosen, decision


def write_text(text: str, target: Path) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_outputs(root: Path, results: dict[str, Any], decision: dict[str, Any]) -> None:
    """Write metrics.json, gate.json, reports/evaluation.json, both reports and the plot data.

    Everything is rendered before the first file is written, so an error
    leaves the previous outputs as they were.
    """
    from pipelines import report

    page = report.render_html(results, decision, report.read_curves(root),
                              report.read_optional_json(root / report.VALIDATION_FILE),
                              report.read_optional_json(root / report.COMPRESSION_FILE))
    summary = report.render_markdown(results, decision)
    curve = report.ndcg_curve_table(results).to_csv(index=False)
    details = {key: value for key, value in results.items() if key not in ("systems", "ndcg_curve")}

    write_json({"test_users": results["test_users"], **results["systems"]}, root / config.METRICS_FILE)
    write_json(decision, root / config.GATE_FILE)
    write_json(details, root / EVALUATION_FILE)
    write_json(report.headline_rows(results), root / report.HEADLINE_PLOT)
    write_text(curve, root / report.NDCG_CURVE_PLOT)
    write_text(summary, root / report.MARKDOWN_REPORT)
    write_text(page, root / report.HTML_REPORT)


def main() -> None:
    from pipelines.cli import run_stage

    def stage() -> None:
        params = config.section(config.load_params(), "evaluate")
        root = config.workspace()
        production = production_model(root)
        candidate, compression = judged_model(root)
        log.info("judging %s", candidate.relative_to(root))
        results, decision = judge(candidate, load_tables(root), params, production)
        decision["judged_model"] = str(candidate.relative_to(root))
        if compression is not None:
            decision["compression"] = compression
        write_outputs(root, results, decision)
        for system, values in results["systems"].items():
            log.info("%s: %s", system, ", ".join(f"{key}={value:.4f}" for key, value in values.items()))
        log.info("gate %s:\n  %s", "passed" if decision["passed"] else "FAILED", "\n  ".join(decision["reasons"]))

    run_stage("evaluate", stage)


if __name__ == "__main__":
    main()
