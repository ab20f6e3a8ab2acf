"""Whole-pipeline runs: `dvc repro` on the real MovieLens-100K data in a copy of the repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO, update_params

pytestmark = pytest.mark.e2e

# Paths that runs create; the copy starts without them, as a fresh clone would.
GENERATED = {".venv", ".git", "data", "models", "dvclive", "reports", "checkpoints", "storage",
             "metrics.json", "gate.json", "dvc.lock", ".pytest_cache", ".airflow", "__pycache__"}


def copy_repository(target: Path) -> Path:
    def ignore(folder, names):
        return [name for name in names if name in GENERATED or name.endswith(".egg-info")]

    shutil.copytree(REPO, target, ignore=ignore)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    subprocess.run([*git, "init", "-q"], cwd=target, check=True)
    subprocess.run([*git, "add", "-A"], cwd=target, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=target, check=True)
    return target


def run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """Run `dvc repro` once from a clean copy with two training epochs."""
    root = copy_repository(tmp_path_factory.mktemp("e2e") / "shoprec")
    update_params(root, {"train.epochs": 2, "train.patience": 0})
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Unix socket paths must stay short
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "RAY_TMPDIR": ray_tmp, "SHOPREC_WORKSPACE": str(root)}
    env.pop("RAY_ADDRESS", None)
    first = run(["dvc", "repro"], root, env)
    yield {"root": root, "env": env, "first": first, "ray_tmp": Path(ray_tmp)}
    shutil.rmtree(ray_tmp, ignore_errors=True)


def test_model_beats_popularity(pipeline_run):
    metrics = json.loads((pipeline_run["root"] / "metrics.json").read_text())
    assert metrics["model"]["test_ndcg@10"] > metrics["popularity"]["test_ndcg@10"] * 1.2
    assert json.loads((pipeline_run["root"] / "gate.json").read_text())["passed"] is True


def test_registry_holds_one_version(pipeline_run):
    root = pipeline_run["root"]
    versions = sorted(path.name for path in (root / "models" / "registry").iterdir() if not path.name.startswith("."))
    assert versions == ["v0001"]
    assert json.loads((root / "models" / "production.json").read_text())["version"] == "v0001"
    card = json.loads((root / "models" / "registry" / "v0001" / "model_card.json").read_text())
    assert set(card["data_version"]) == {"data/ingested", "data/split"}


def test_recommend_answers(pipeline_run):
    result = run([sys.executable, "-m", "pipelines.cli", "recommend", "--user", "196", "-k", "10"],
                 pipeline_run["root"], pipeline_run["env"])
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "top 10 for user 196 (model v0001):"
    assert len(lines) == 11


def test_dvc_curves_written(pipeline_run):
    curve = pipeline_run["root"] / "dvclive" / "plots" / "metrics" / "val_ndcg@10.tsv"
    assert len(curve.read_text().strip().splitlines()) == 3  # header and two epochs


def test_ray_stays_on_loopback(pipeline_run):
    logs = list(pipeline_run["ray_tmp"].glob("ray/session_*/logs/*"))
    assert logs
    addresses = set()
    for path in logs:
        if path.is_file():
            addresses |= set(re.findall(r"\b(?:\d{1,3}\.){3}\d{1,3}\b", path.read_text(errors="ignore")))
    assert addresses <= {"127.0.0.1", "0.0.0.0"}, addresses


def test_second_repro_runs_nothing(pipeline_run):
    result = run(["dvc", "repro"], pipeline_run["root"], pipeline_run["env"])
    assert "Running stage" not in result.stdout
    assert "Data and pipelines are up to date" in result.stdout


def test_train_param_reruns_from_train(pipeline_run):
    update_params(pipeline_run["root"], {"train.learning_rate": 0.003})
    result = run(["dvc", "repro"], pipeline_run["root"], pipeline_run["env"])
    ran = re.findall(r"Running stage '(\w+)'", result.stdout)
    assert sorted(ran) == ["coldstart", "evaluate", "promote", "train"]
    assert ran[0] == "train"
    assert ran.index("evaluate") < ran.index("promote")
