"""Promote stage: register the candidate and move production when the gate passed.

Run as `python -m pipelines.promote` (the DVC stage `promote`). When
`gate.json` passed, or `promote.force` is true, the candidate becomes a new
registry version and the production pointer moves to it. The version contains
the model, the tables it needs for serving, its ONNX export and the evaluation
report when present, and a model card. The card holds the metrics with their bootstrap
intervals, the gate decision and its reasons, params, the data version from
dvc.lock, the git revision, the Airflow run id, the time and who triggered
the run. After every change of production, the top-K of every known user is
written to `data/recommendations/recommendations.parquet`. Otherwise
production is left untouched and the reason is logged.
`reports/promotion.json` records the decision.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pipelines import config, registry
from pipelines.errors import ConfigError, DataError, RegistryError
from pipelines.io import atomic_path, read_json, write_json
from pipelines.model import load_bundle

log = logging.getLogger(__name__)

PROMOTION_REPORT = config.REPORTS_DIR / "promotion.json"
EVALUATION_FILE = config.REPORTS_DIR / "evaluation.json"
EVALUATION_PAGE = config.REPORTS_DIR / "evaluation.html"
RECOMMENDATIONS_FILE = Path("data/recommendations/recommendations.parquet")
DATA_STAGES = ("ingest", "split")


def data_version(root: Path) -> dict[str, str]:
    """Content hashes of the data stages' outputs, as recorded in dvc.lock."""
    path = root / "dvc.lock"
    if not path.is_file():
        return {}
    lock = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    hashes = {}
    for stage in DATA_STAGES:
        for out in (lock.get("stages", {}).get(stage, {}) or {}).get("outs", []):
            hashes[out["path"]] = out.get("md5") or out.get("hash", "")
    return hashes


def git_revision(root: Path) -> str:
    try:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                  check=True, timeout=10).stdout.strip()
        # dvc.lock changes on every pipeline run, and the card records the data version itself.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock"],
                               cwd=root, capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{revision}-dirty" if dirty else revision


def read_evaluation(root: Path) -> dict[str, Any]:
    """Read gate.json, metrics.json and reports/evaluation.json, checking what promotion needs."""
    paths = {"gate": root / config.GATE_FILE, "metrics": root / config.METRICS_FILE,
             "details": root / EVALUATION_FILE}
    for path in paths.values():
        if not path.is_file():
            raise DataError(f"{path}: file not found; run the evaluate stage first")
    documents = {name: read_json(path) for name, path in paths.items()}
    gate, metrics = documents["gate"], documents["metrics"]
    if not isinstance(gate.get("passed"), bool) or not isinstance(gate.get("checks"), list):
        raise DataError(f"{paths['gate']}: no gate decision ('passed' and 'checks'); rerun the evaluate stage")
    candidate = metrics.get("model")
    if not isinstance(candidate, dict) or not candidate:
        raise DataError(f"{paths['metrics']}: no metrics of the candidate ('model' section); rerun the evaluate stage")
    metric = gate.get("metric", "test_ndcg@10")
    if metric not in candidate:
        raise DataError(f"{paths['metrics']}: candidate metrics lack '{metric}', the metric the gate judged; "
                        "rerun the evaluate stage")
    return documents


def model_card(root: Path, params: dict[str, Any], evaluation: dict[str, Any], forced: bool,
               production_before: str | None) -> dict[str, Any]:
    gate, details = evaluation["gate"], evaluation["details"]
    return {
        "created_at": registry.now(),
        "triggered_by": registry.actor(),
        "run_id": os.environ.get("AIRFLOW_CTX_DAG_RUN_ID") or os.environ.get("SHOPREC_RUN_ID"),
        "git_revision": git_revision(root),
        "data_version": data_version(root),
        "params": params,
        "metrics": evaluation["metrics"],
        "intervals": details.get("intervals", {}),
        "bootstrap": details.get("bootstrap", {}),
        "difference_to_production": details.get("difference", {}),
        "slices": details.get("slices", {}),
        "efficiency": details.get("efficiency", {}),
        "production_before": production_before,
        "gate": {key: gate.get(key) for key in ("passed", "metric", "production_version", "checks", "reasons")},
        "compression": gate.get("compression"),
        "judged_model": gate.get("judged_model"),
        "forced": forced,
    }


def serving_tables(root: Path, folder: Path) -> dict[str, Path]:
    """Write the items (id, title) and every known interaction, which recommend needs, to `folder`."""
    ingested = root / config.INGESTED_DIR
    items = pd.read_parquet(ingested / "items.parquet", columns=["item_id", "title"])
    interactions = pd.read_parquet(ingested / "interactions.parquet", columns=["user_id", "item_id", "timestamp"])
    paths = {"items.parquet": folder / "items.parquet", "interactions.parquet": folder / "interactions.parquet"}
    items.to_parquet(paths["items.parquet"], index=False)
    interactions.to_parquet(paths["interactions.parquet"], index=False)
    return paths


def version_files(root: Path, scratch: Path, judged_model: str | None) -> dict[str, Path]:
    """Return the files of a new version: the model, the serving tables, and the ONNX export and report when present.

    `judged_model` is the file the gate judged (gate.json). When it is not the
    trained model, it becomes the version's compressed model, which the version serves.
    """
    candidate = root / config.CANDIDATE_DIR
    files = {registry.MODEL_FILE: candidate / registry.MODEL_FILE, **serving_tables(root, scratch)}
    if (candidate / "model.onnx").is_file():
        files["model.onnx"] = candidate / "model.onnx"
    if judged_model and root / judged_model != candidate / registry.MODEL_FILE:
        if not (root / judged_model).is_file():
            raise DataError(f"{root / config.GATE_FILE}: judged model {judged_model} not found; "
                            "rerun the compress and evaluate stages")
        files[registry.COMPRESSED_FILE] = root / judged_model
    onnx = root / "models" / "compressed" / "chosen.onnx"
    if onnx.is_file():
        files["model.onnx"] = onnx
    if (root / EVALUATION_PAGE).is_file():
        files["report.html"] = root / EVALUATION_PAGE
    return files


def recommendations_k(params: dict[str, Any]) -> int:
    k = params.get("recommendations_k", 20)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"params.yaml: promote.recommendations_k is {k!r}, expected a positive integer")
    return k


def write_recommendations(root: Path, k: int) -> Path:
    """Write the production model's top-K for every known user to data/recommendations/, atomically."""
    from pipelines.recommend import batch_recommendations

    frame = batch_recommendations(registry.production_folder(root), k)
    target = root / RECOMMENDATIONS_FILE
    with atomic_path(target) as tmp:
        frame.to_parquet(tmp, index=False)
        tmp.chmod(0o644)  # a serving store may load it as another user
    log.info("wrote %d recommendations for %d users to %s", len(frame), frame["user_id"].nunique(), target)
    return target


def recommendations_current(root: Path, version: str) -> bool:
    """Return whether data/recommendations/ contains the batch of production `version`."""
    path = root / RECOMMENDATIONS_FILE
    if not path.is_file():
        return False
    versions = pd.read_parquet(path, columns=["model_version"])["model_version"]
    return bool(len(versions)) and versions.iloc[0] == version


def check_production_unchanged(gate: dict[str, Any], current: dict[str, Any] | None) -> None:
    """Reject a gate that compared the candidate with another production model than the current one."""
    compared = gate.get("production_version")
    now_version = current["version"] if current else None
    if compared != now_version:
        raise RegistryError(
            f"production changed after the evaluate stage: the gate compared the candidate with "
            f"{compared or 'no production model'}, production is now {now_version or 'empty'}; "
            "rerun the evaluate stage (dvc repro -f evaluate) before promoting")


def was_production(pointer: dict[str, Any] | None, version: str) -> bool:
    """Return whether `version` was ever production, according to the promotion history."""
    history = (pointer or {}).get("history") or []
    return any(entry["to"] == version for entry in history)


def registered_version(root: Path) -> str | None:
    """Return the version that already contains the candidate's model file, if any."""
    candidate = root / config.CANDIDATE_DIR / registry.MODEL_FILE
    if not candidate.is_file():
        return None
    return registry.find_version_with_model(root, registry.file_digest(candidate))


def register_and_point(root: Path, evaluation: dict[str, Any], forced: bool, current: dict[str, Any] | None,
                       existing: str | None) -> tuple[str, dict[str, Any]]:
    """Register the candidate, unless version `existing` already contains it, and make it production."""
    load_bundle(root / config.CANDIDATE_DIR / registry.MODEL_FILE)  # refuse a damaged candidate before registering
    version = existing
    if version is None:
        card = model_card(root, config.load_params(), evaluation, forced, current["version"] if current else None)
        with tempfile.TemporaryDirectory() as scratch:
            version = registry.add_version(root, version_files(root, Path(scratch), card["judged_model"]), card)
    reason = "forced by promote.force; the gate failed" if forced and not evaluation["gate"]["passed"] else "gate passed"
    return version, registry.set_production(root, version, reason, "promote")


def promote(root: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Register the candidate and move production if the gate allows; return the decision."""
    evaluation = read_evaluation(root)
    gate, forced = evaluation["gate"], bool(params.get("force", False))
    k = recommendations_k(params)
    with registry.locked(root):
        current = registry.production(root)
        current_version = current["version"] if current else None
        existing = registered_version(root)
        if existing is not None and existing != current_version and was_production(current, existing):
            log.warning("candidate %s was production before and was replaced; production stays at %s",
                        existing, current_version)
            return {"promoted": False, "production": current_version,
                    "reason": f"the candidate is {existing}, which was production before and was replaced by "
                              f"hand; promote it again with: shoprec models promote {existing} --reason ..."}
        if existing is not None and existing == current_version:
            if not recommendations_current(root, current_version):  # a crash came between pointer and batch
                write_recommendations(root, k)
            return {"promoted": False, "reason": f"the candidate is already production version {existing}",
                    "production": current_version}
        check_production_unchanged(gate, current)
        if not gate["passed"] and not forced:
            failed = [check["name"] for check in gate["checks"] if not check.get("passed")]
            log.warning("gate failed (%s); production stays at %s", ", ".join(failed) or "no checks",
                        current_version or "no model")
            return {"promoted": False, "reason": f"gate failed: {', '.join(failed)}", "production": current_version}
        version, pointer = register_and_point(root, evaluation, forced, current, existing)
    log.info("promoted %s to production (previous: %s)", version, pointer["previous"] or "none")
    write_recommendations(root, k)
    return {"promoted": True, "reason": pointer["reason"], "production": version, "previous": pointer["previous"]}


def main() -> None:
    from pipelines.cli import run_stage

    def stage() -> None:
        root = config.workspace()
        registry.registry_dir(root).mkdir(parents=True, exist_ok=True)  # the DVC output exists even when empty
        decision = promote(root, config.section(config.load_params(), "promote"))
        write_json(decision, root / PROMOTION_REPORT)

    run_stage("promote", stage)


if __name__ == "__main__":
    main()
