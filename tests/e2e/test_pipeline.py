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

import pandas as pd
import pytest

from tests.conftest import REPO, update_params
from tests.e2e.test_bad_inputs import CASES_DIR, install_case

pytestmark = pytest.mark.e2e

# Paths that runs create; the copy starts without them, as a fresh clone would.
GENERATED = {".venv", ".git", "data", "models", "dvclive", "reports", "checkpoints", "storage",
             "metrics.json", "gate.json", "dvc.lock", ".pytest_cache", ".airflow", "__pycache__"}


def copy_repository(target: Path) -> Path:
    def ignore(folder, names):
        ignored = [name for name in names if name in GENERATED or name.endswith(".egg-info")]
        if Path(folder).name == ".dvc":
            # DVC's cache and run cache would let a "clean" run restore outputs instead of running stages.
            ignored += [name for name in names if name in ("cache", "tmp", "config.local")]
        return ignored

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
    """Run `dvc repro` once from a clean copy with two training epochs and a short compress stage."""
    root = copy_repository(tmp_path_factory.mktemp("e2e") / "shoprec")
    # Every compress candidate is still built and measured, with fewer steps and timed users.
    update_params(root, {"train.epochs": 2, "train.patience": 0, "compress.prune.finetune_steps": 100,
                         "compress.distill.epochs": 1, "compress.measure.latency_users": 50})
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


def test_baselines_scored_in_same_run(pipeline_run):
    metrics = json.loads((pipeline_run["root"] / "metrics.json").read_text())
    # The baselines are deterministic given the split (figures in docs/benchmarks.md).
    assert metrics["popularity"]["test_ndcg@10"] == pytest.approx(0.0446, abs=0.001)
    assert metrics["ease"]["test_ndcg@10"] == pytest.approx(0.0737, abs=0.001)
    assert metrics["item_knn"]["test_ndcg@10"] == pytest.approx(0.0657, abs=0.001)
    assert {"test_ndcg@20", "test_popularity_bias@10", "test_coverage@20"} <= set(metrics["model"])


def test_report_and_intervals_written(pipeline_run):
    root = pipeline_run["root"]
    details = json.loads((root / "reports" / "evaluation.json").read_text())
    interval = details["intervals"]["model"]["test_ndcg@10"]
    assert interval["low"] < json.loads((root / "metrics.json").read_text())["model"]["test_ndcg@10"] < interval["high"]
    assert set(details["slices"]) >= {"users:new", "users:active", "items:head", "items:torso", "items:tail"}
    page = (root / "reports" / "evaluation.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # metrics and training curves


def test_registry_holds_one_version(pipeline_run):
    root = pipeline_run["root"]
    versions = sorted(path.name for path in (root / "models" / "registry").iterdir() if not path.name.startswith("."))
    assert versions == ["v0001"]
    assert json.loads((root / "models" / "production.json").read_text())["version"] == "v0001"
    card = json.loads((root / "models" / "registry" / "v0001" / "model_card.json").read_text())
    assert set(card["data_version"]) == {"data/ingested", "data/split"}
    assert set(card["files"]) == {"model.pt", "items.parquet", "interactions.parquet", "report.html",
                                  "compressed.pt", "model.onnx"}
    assert card["compression"]["chosen"]
    assert card["compression"]["reason"]


def test_batch_recommendations_written(pipeline_run):
    frame = pd.read_parquet(pipeline_run["root"] / "data" / "recommendations" / "recommendations.parquet")
    assert frame["user_id"].nunique() == 943
    assert set(frame["model_version"]) == {"v0001"}
    assert frame.groupby("user_id")["rank"].max().eq(20).all()


def test_models_list_marks_production(pipeline_run):
    result = run([sys.executable, "-m", "pipelines.cli", "models", "list"], pipeline_run["root"], pipeline_run["env"])
    assert result.stdout.splitlines()[1].startswith("* v0001")


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
    assert ran[0] == "train"
    assert sorted(ran) == ["coldstart", "compress", "evaluate", "promote", "train"]
    assert ran.index("evaluate") < ran.index("promote")
    # The new candidate was judged against production v0001 on the same test users.
    gate = json.loads((pipeline_run["root"] / "gate.json").read_text())
    champion = next(check for check in gate["checks"] if check["name"] == "test_ndcg@10 against production")
    assert gate["production_version"] == "v0001"
    assert champion["verdict"] in ("pass", "fail")


def test_compress_measures_every_candidate(pipeline_run):
    root = pipeline_run["root"]
    report = json.loads((root / "reports" / "compression.json").read_text())
    rows = report["compress"]
    assert set(rows) == {"teacher", "prune_50", "prune_80", "int8", "int4", "student", "student_int8"}
    assert [name for name, row in rows.items() if row["status"] != "ok"] == []
    decision = json.loads((root / "reports" / "compress_decision.json").read_text())
    assert decision["chosen"] in rows
    assert (root / decision["model_path"]).is_file()
    assert decision["onnx"]["passed"] is True
    # The gate judged the chosen model, the one the registry version serves.
    assert json.loads((root / "gate.json").read_text())["judged_model"] == decision["model_path"]


def test_bad_data_stops_before_split(pipeline_run):
    """An export with ratings on a 0-10 scale fails validate; nothing after it runs or changes."""
    root = pipeline_run["root"]
    protected = [root / "models" / "production.json", root / "data" / "quality" / "last_good.json",
                 *sorted((root / "data" / "split").glob("*.parquet")),
                 *sorted((root / "models" / "registry").rglob("*.json"))]
    before = {path: path.read_bytes() for path in protected}
    install_case(root, CASES_DIR / "rating_above_max", {})

    result = subprocess.run(["dvc", "repro"], cwd=root, env=pipeline_run["env"], capture_output=True, text=True,
                            timeout=600)

    assert result.returncode != 0
    assert re.findall(r"Running stage '(\w+)'", result.stdout) == ["ingest", "validate"]
    assert "validate stage failed: " in result.stderr
    assert "interactions.rating_range" in result.stderr
    assert {path: path.read_bytes() for path in protected} == before
    report = json.loads((root / "reports" / "validation.json").read_text())
    assert (root / report["quarantine"] / "interactions.parquet").is_file()


def test_registry_fetched_back_from_remote(pipeline_run):
    # Last in this module: it empties the DVC cache, after which `dvc repro` would rerun every stage.
    root, env = pipeline_run["root"], pipeline_run["env"]
    run(["dvc", "push"], root, env)
    shutil.rmtree(root / "models" / "registry" / "v0001")
    shutil.rmtree(root / ".dvc" / "cache")
    run(["dvc", "pull", "models/registry"], root, env)
    card = json.loads((root / "models" / "registry" / "v0001" / "model_card.json").read_text())
    result = run([sys.executable, "-m", "pipelines.cli", "models", "show", "v0001"], root, env)
    assert "  files:        intact" in result.stdout
    assert card["version"] == "v0001"
