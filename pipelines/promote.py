"""Promote stage: register the candidate and move production when the gate passed.

Run as `python -m pipelines.promote` (the DVC stage `promote`). When
`gate.json` passed, or `promote.force` is true, the candidate model, the
tables it needs for serving and a model card (metrics, gate, params, data
version from dvc.lock, git revision, time) become a new registry version and
the production pointer moves to it. Otherwise production is left untouched
and the reason is logged. `reports/promotion.json` records the decision.
"""

from __future__ import annotations

import getpass
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pipelines import config, registry
from pipelines.errors import DataError
from pipelines.io import read_json, write_json
from pipelines.model import load_bundle

log = logging.getLogger(__name__)

PROMOTION_REPORT = config.REPORTS_DIR / "promotion.json"
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
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{revision}-dirty" if dirty else revision


def model_card(root: Path, params: dict[str, Any], metrics: dict[str, Any], gate: dict[str, Any],
               forced: bool) -> dict[str, Any]:
    return {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "triggered_by": os.environ.get("SHOPREC_TRIGGERED_BY") or getpass.getuser(),
        "run_id": os.environ.get("AIRFLOW_CTX_DAG_RUN_ID") or os.environ.get("SHOPREC_RUN_ID"),
        "git_revision": git_revision(root),
        "data_version": data_version(root),
        "params": params,
        "metrics": metrics,
        "gate": gate,
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


def promote(root: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Register the candidate and move production if the gate allows; return the decision."""
    gate_path, metrics_path = root / config.GATE_FILE, root / config.METRICS_FILE
    for path in (gate_path, metrics_path):
        if not path.is_file():
            raise DataError(f"{path}: file not found; run the evaluate stage first")
    gate, metrics = read_json(gate_path), read_json(metrics_path)
    forced = bool(params.get("force", False))
    if not gate.get("passed") and not forced:
        failed = [check["name"] for check in gate.get("checks", []) if not check.get("passed")]
        current = registry.production(root)
        log.warning("gate failed (%s); production stays at %s", ", ".join(failed) or "no checks",
                    current["version"] if current else "no model")
        return {"promoted": False, "reason": f"gate failed: {', '.join(failed)}",
                "production": current["version"] if current else None}

    candidate = root / config.CANDIDATE_DIR / "model.pt"
    load_bundle(candidate)  # refuse a damaged candidate before it reaches the registry
    all_params = config.load_params()
    card = model_card(root, all_params, metrics, gate, forced)
    with tempfile.TemporaryDirectory() as scratch:
        files = {"model.pt": candidate, **serving_tables(root, Path(scratch))}
        version = registry.add_version(root, files, card)
    reason = "forced by promote.force" if forced and not gate.get("passed") else "gate passed"
    pointer = registry.set_production(root, version, reason)
    log.info("promoted %s to production (previous: %s)", version, pointer["previous"] or "none")
    return {"promoted": True, "reason": reason, "production": version, "previous": pointer["previous"]}


def main() -> None:
    from pipelines.cli import run_stage

    def stage() -> None:
        root = config.workspace()
        decision = promote(root, config.section(config.load_params(), "promote"))
        write_json(decision, root / PROMOTION_REPORT)

    run_stage("promote", stage)


if __name__ == "__main__":
    main()
