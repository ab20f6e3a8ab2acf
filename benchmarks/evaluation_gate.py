"""Measure the promoted model against the baselines, and the time of the evaluate stage.

Run from the repository root with the project's virtual environment:

    .venv/bin/python benchmarks/evaluation_gate.py [--output benchmarks/results/evaluation_gate.json]

From a clean copy of the repository with the default params.yaml, in one
session on one machine, it records: a clean `dvc repro` and the test metrics,
with bootstrap intervals, of the promoted model, most-popular, item-kNN and
EASE, all from the same evaluate run (read back from the model card of the
promoted version); then the wall time of `python -m pipelines.evaluate`
run again, now against the production model, and its champion-challenger
verdict.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.pipeline_run import machine, timed_repro  # noqa: E402
from tests.e2e.test_pipeline import copy_repository  # noqa: E402

SYSTEMS = ("model", "popularity", "item_knn", "ease")
HEADLINE = ("test_ndcg@10", "test_recall@10", "test_ndcg@20", "test_coverage@10", "test_popularity_bias@10")


def timed_evaluate(root: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pipelines.evaluate"], cwd=root, env=env, capture_output=True,
                            text=True, timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"evaluate failed:\n{result.stderr[-3000:]}")
    return round(time.perf_counter() - started, 1)


def promoted_figures(root: Path) -> dict:
    """Metrics with intervals of every system, from the card of the promoted version."""
    version = json.loads((root / "models" / "production.json").read_text())["version"]
    card = json.loads((root / "models" / "registry" / version / "model_card.json").read_text())
    figures = {}
    for system in SYSTEMS:
        figures[system] = {}
        for name in HEADLINE:
            entry = {"value": round(card["metrics"][system][name], 4)}
            interval = card["intervals"].get(system, {}).get(name)
            if interval:
                entry.update(low=round(interval["low"], 4), high=round(interval["high"], 4))
            figures[system][name] = entry
    return {"version": version, "gate_passed": card["gate"]["passed"], "judged_model": card.get("judged_model"),
            "compress_chose": (card.get("compression") or {}).get("chosen"), "systems": figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "evaluation_gate.json")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="shoprec-bench-"))
    root = copy_repository(scratch / "shoprec")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "SHOPREC_WORKSPACE": str(root), "PYTHONPATH": str(root)}
    env.pop("RAY_ADDRESS", None)
    try:
        clean = timed_repro(root, env)
        promoted = promoted_figures(root)
        seconds = timed_evaluate(root, env)
        gate = json.loads((root / "gate.json").read_text())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    champion = next(check for check in gate["checks"] if check["name"].endswith("against production"))
    report = {
        "machine": machine(),
        "clean_repro": clean,
        "promoted": promoted,
        "model_minus_ease_ndcg@10": round(promoted["systems"]["model"]["test_ndcg@10"]["value"]
                                          - promoted["systems"]["ease"]["test_ndcg@10"]["value"], 4),
        "evaluate_against_production": {"seconds": seconds, "champion_check": champion},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
