"""Time `dvc repro` of the whole pipeline on MovieLens-100K from a clean copy of the repository.

Run from the repository root with the project's virtual environment:

    .venv/bin/python benchmarks/pipeline_run.py [--output benchmarks/results/pipeline_run.json]

Measures, in one session on one machine: a clean `dvc repro` (wall time,
per-stage time from DVC's output, the model's and popularity's test metrics,
and the train stage's start-up versus compute split); a second `dvc repro`
with nothing changed (stages run: expect none); and a `dvc repro` after a
change to `train.learning_rate` (stages run: expect train, evaluate, promote).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import update_params  # noqa: E402
from tests.e2e.test_pipeline import copy_repository  # noqa: E402


def timed_repro(root: Path, env: dict[str, str]) -> dict:
    started = time.perf_counter()
    result = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"dvc repro failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return {"seconds": round(seconds, 1), "stages_run": re.findall(r"Running stage '(\w+)'", result.stdout)}


def machine() -> str:
    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "pipeline_run.json")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="shoprec-bench-"))
    root = copy_repository(scratch / "shoprec")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "SHOPREC_WORKSPACE": str(root)}
    env.pop("RAY_ADDRESS", None)
    try:
        clean = timed_repro(root, env)
        metrics = json.loads((root / "metrics.json").read_text())
        timing = json.loads((root / "reports" / "train_timing.json").read_text())
        unchanged = timed_repro(root, env)
        update_params(root, {"train.learning_rate": 0.003})
        after_train_change = timed_repro(root, env)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    report = {
        "machine": machine(),
        "clean_repro": clean,
        "test_metrics": {"model": metrics["model"], "popularity": metrics["popularity"]},
        "train_stage_timing": {key: round(value, 1) if isinstance(value, float) else value
                               for key, value in timing.items() if key not in ("history", "worker_nodes")},
        "unchanged_repro": unchanged,
        "after_train_param_change": after_train_change,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
