"""Run the whole pipeline on the default fashion-shop and record the cold-start figures.

Run from the repository root with the project's virtual environment (needs the
Debian package dataset-fashion-mnist):

    .venv/bin/python benchmarks/coldstart_lift.py [--output benchmarks/results/coldstart_lift.json]

Copies the repository to a scratch folder and sets `ingest.dataset:
fashion-shop` with the settings that docs/fashion-shop.md recommends (10% of
the products held out, item masking on); every other param keeps its default.
Then it runs `dvc repro` once and records the train timing, the warm test
metrics and `reports/coldstart.json`. That report has cold-start Recall@10 and
NDCG@10 with images on, with images off and for the popularity baseline, and
the ratio of images on to off, which should be at least 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.pipeline_run import machine  # noqa: E402
from tests.conftest import update_params  # noqa: E402
from tests.e2e.test_pipeline import copy_repository  # noqa: E402

FASHION_SHOP = {
    "ingest.dataset": "fashion-shop",
    "split.coldstart_items": 0.1,
    "augment.feature_augmentation.mask_items.enabled": True,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "coldstart_lift.json")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="shoprec-coldstart-"))
    root = copy_repository(scratch / "shoprec")
    update_params(root, FASHION_SHOP)
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "RAY_TMPDIR": ray_tmp, "SHOPREC_WORKSPACE": str(root)}
    env.pop("RAY_ADDRESS", None)
    try:
        started = time.perf_counter()
        result = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True, timeout=7200)
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"dvc repro failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        report = {
            "params": FASHION_SHOP,
            "repro_seconds": round(seconds, 1),
            "stages_run": re.findall(r"Running stage '(\w+)'", result.stdout),
            "train_timing": json.loads((root / "reports" / "train_timing.json").read_text()),
            "warm_test": json.loads((root / "metrics.json").read_text()),
            "coldstart": json.loads((root / "reports" / "coldstart.json").read_text()),
            "load_average_1min_at_end": round(os.getloadavg()[0], 1),
            "machine": machine(),
        }
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report["coldstart"], indent=2))


if __name__ == "__main__":
    main()
