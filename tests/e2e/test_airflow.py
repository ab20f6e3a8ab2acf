"""Airflow runs of the real pipeline: `dag.test()` of shoprec_retrain in a copy of the repository.

Each run goes through tests/e2e/run_dag.py in a subprocess with a throw-away
AIRFLOW_HOME and SQLite database. The runs share one workspace and build on
each other, in this file's order: a full run with small params, a failed gate,
publishing to an S3-compatible server, and a run on corrupt input.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import update_params
from tests.e2e.test_pipeline import copy_repository, run

pytestmark = pytest.mark.e2e

RUN_DAG = Path(__file__).with_name("run_dag.py")
STAGES = ["ingest", "validate", "split", "augment", "train", "compress", "evaluate", "coldstart", "promote"]
AFTER_VALIDATE = ["split", "augment", "train", "compress", "evaluate", "coldstart", "gate", "promote", "publish"]
DVC_OUTPUTS = ["data/ingested", "data/split", "models/candidate"]
S3_BUCKET = "shoprec-e2e"


@dataclass
class Workspace:
    root: Path
    env: dict[str, str]
    original_params: bytes


@dataclass
class DagRun:
    state: str
    run_id: str
    tasks: dict[str, str]
    log: str


@pytest.fixture(scope="module")
def workspace_copy(tmp_path_factory):
    """A clean copy of the repository with an Airflow home and a migrated SQLite database."""
    scratch = tmp_path_factory.mktemp("airflow_e2e")
    root = copy_repository(scratch / "shoprec")
    # These tests check orchestration, not compression (test_pipeline.py does): a
    # shorter compress stage keeps the suite within its time budget.
    update_params(root, {"compress.distill.enabled": False, "compress.prune.finetune_steps": 50,
                         "compress.measure.latency_users": 50})
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Unix socket paths must stay short
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "SHOPREC_", "AWS_"))}
    env.pop("RAY_ADDRESS", None)
    env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1", "RAY_TMPDIR": ray_tmp, "PYTHONPATH": str(root), "SHOPREC_WORKSPACE": str(root),
        "AIRFLOW_HOME": str(scratch / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        # Never ask the cloud metadata address for credentials.
        "AWS_EC2_METADATA_DISABLED": "true",
    })
    run([sys.executable, "-m", "airflow", "db", "migrate"], root, env)
    yield Workspace(root, env, (root / "params.yaml").read_bytes())
    shutil.rmtree(ray_tmp, ignore_errors=True)


def run_dag(workspace: Workspace, dag_id: str, conf: dict | None = None, mark_success: list[str] | None = None,
            **extra_env: str) -> DagRun:
    output = workspace.root.parent / f"{dag_id}-{time.monotonic_ns()}.json"
    command = [sys.executable, str(RUN_DAG), str(workspace.root / "dags" / f"{dag_id}.py"), str(output)]
    if conf is not None:
        command += ["--conf", json.dumps(conf)]
    if mark_success:
        command += ["--mark-success", "|".join(mark_success)]
    result = subprocess.run(command, cwd=workspace.root, env={**workspace.env, **extra_env}, capture_output=True,
                            text=True, timeout=900)
    log = result.stdout + result.stderr
    assert result.returncode == 0, f"run_dag.py failed:\n{log[-6000:]}"
    outcome = json.loads(output.read_text())
    return DagRun(outcome["state"], outcome["run_id"], outcome["tasks"], log)


def registry_versions(root: Path) -> list[str]:
    folder = root / "models" / "registry"
    return sorted(path.name for path in folder.iterdir() if not path.name.startswith(".")) if folder.is_dir() else []


def file_digests(root: Path) -> dict[str, str]:
    digests = {}
    for output in DVC_OUTPUTS:
        for path in sorted((root / output).rglob("*")):
            if path.is_file():
                digests[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def fresh_clone(workspace: Workspace, target: Path) -> Path:
    """Commit the workspace's dvc.lock and DVC config, and clone it as a colleague would."""
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    run([*git, "add", "-A"], workspace.root, workspace.env)
    run([*git, "commit", "-qm", "pipeline run", "--allow-empty"], workspace.root, workspace.env)
    run(["git", "clone", "-q", str(workspace.root), str(target)], workspace.root.parent, workspace.env)
    return target


# ---------------------------------------------------------------- a full run


@pytest.fixture(scope="module")
def retrain_run(workspace_copy) -> DagRun:
    return run_dag(workspace_copy, "shoprec_retrain", conf={"epochs": 1, "num_workers": 1})


def test_retrain_run_succeeds(retrain_run):
    assert retrain_run.state == "success"
    expected = {task: "success" for task in ["claim_workspace", *STAGES, "gate", "publish", "release_workspace"]}
    assert retrain_run.tasks == expected


def test_retrain_registers_version(workspace_copy, retrain_run):
    root = workspace_copy.root
    assert registry_versions(root) == ["v0001"]
    assert json.loads((root / "models" / "production.json").read_text())["version"] == "v0001"
    card = json.loads((root / "models" / "registry" / "v0001" / "model_card.json").read_text())
    assert card["run_id"] == retrain_run.run_id
    assert card["params"]["train"]["epochs"] == 1
    assert card["params"]["train"]["num_workers"] == 1
    assert card["forced"] is False


def test_form_params_apply_to_run_only(workspace_copy, retrain_run):
    root = workspace_copy.root
    assert (root / "params.yaml").read_bytes() == workspace_copy.original_params
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["epochs"] == 1
    assert not (root / ".dvc" / "tmp" / "shoprec-run" / "owner.json").exists()
    assert "params.yaml for this run: train.epochs = 1" in retrain_run.log


def pushed_count(log: str, remote: str) -> int:
    """Number of files the publish task reports it pushed to `remote`, or -1 when it reports none."""
    match = re.search(rf"pushed (\d+) file\(s\) to DVC remote '{remote}'", log)
    return int(match.group(1)) if match else -1


def test_local_remote_serves_fresh_clone(workspace_copy, retrain_run, tmp_path):
    assert pushed_count(retrain_run.log, "local") > 0
    clone = fresh_clone(workspace_copy, tmp_path / "clone")
    remote = workspace_copy.root / "storage" / "dvc-remote"
    run([sys.executable, "-m", "dvc", "remote", "modify", "--local", "local", "url", str(remote)], clone,
        workspace_copy.env)
    run([sys.executable, "-m", "dvc", "pull"], clone, workspace_copy.env)
    assert file_digests(clone) == file_digests(workspace_copy.root)


# ---------------------------------------------------------------- a failed gate


def test_failed_gate_skips_promotion(workspace_copy, retrain_run):
    root = workspace_copy.root
    gate_path = root / "gate.json"
    passed_gate = gate_path.read_text()
    pointer = (root / "models" / "production.json").read_bytes()
    failed = {"passed": False, "checks": [{"name": "test_ndcg@10 above popularity", "passed": False}]}
    gate_path.write_text(json.dumps(failed))
    try:
        result = run_dag(workspace_copy, "shoprec_retrain", mark_success=STAGES[:-1])
    finally:
        gate_path.write_text(passed_gate)
    assert result.state == "success"
    assert (result.tasks["gate"], result.tasks["promote"], result.tasks["publish"]) == ("success", "skipped", "skipped")
    assert result.tasks["release_workspace"] == "success"
    assert "gate failed: test_ndcg@10 above popularity; production unchanged" in result.log
    assert (root / "models" / "production.json").read_bytes() == pointer
    assert registry_versions(root) == ["v0001"]


# ---------------------------------------------------------------- an S3-compatible remote


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server(workspace_copy):
    """moto's S3 server on 127.0.0.1 with an empty bucket; yields its endpoint URL."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=2).close()
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"moto server did not start on {endpoint}")
                time.sleep(0.5)
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test-key",
                     aws_secret_access_key="test-secret").create_bucket(Bucket=S3_BUCKET)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_publish_to_s3_and_pull(workspace_copy, retrain_run, s3_server, tmp_path):
    root = workspace_copy.root
    run([sys.executable, "-m", "dvc", "remote", "add", "s3store", f"s3://{S3_BUCKET}/dvc"], root, workspace_copy.env)
    connection = {"conn_type": "aws", "login": "test-key", "password": "test-secret",
                  "extra": {"endpoint_url": s3_server, "region_name": "us-east-1"}}
    result = run_dag(workspace_copy, "shoprec_retrain", mark_success=[*STAGES, "gate"],
                     SHOPREC_DVC_REMOTE="s3store", AIRFLOW_CONN_SHOPREC_DVC_REMOTE=json.dumps(connection))
    assert result.tasks["publish"] == "success"
    assert pushed_count(result.log, "s3store") > 0
    assert "test-secret" not in result.log

    clone = fresh_clone(workspace_copy, tmp_path / "clone")
    credentials = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret",
                   "AWS_ENDPOINT_URL_S3": s3_server, "AWS_DEFAULT_REGION": "us-east-1"}
    run([sys.executable, "-m", "dvc", "pull", "--remote", "s3store"], clone, {**workspace_copy.env, **credentials})
    assert file_digests(clone) == file_digests(root)


# ---------------------------------------------------------------- corrupt input


def test_corrupt_input_fails_validate(workspace_copy, retrain_run, tmp_path):
    root = workspace_copy.root
    files = {}
    for table in ("interactions", "items", "users"):
        frame = pd.read_parquet(root / "data" / "ingested" / f"{table}.parquet")
        if table == "interactions":
            frame.loc[frame.index[:3], "rating"] = 9.0
        files[table] = tmp_path / f"{table}.parquet"
        frame.to_parquet(files[table], index=False)
    pointer = (root / "models" / "production.json").read_bytes()
    overrides = {f"ingest.files.{table}": str(path) for table, path in files.items()}

    result = run_dag(workspace_copy, "shoprec_retrain", conf={"dataset": "files", "overrides": overrides})

    assert result.state == "failed"
    assert (result.tasks["ingest"], result.tasks["validate"]) == ("success", "failed")
    assert {task: result.tasks[task] for task in AFTER_VALIDATE} == {task: "upstream_failed" for task in AFTER_VALIDATE}
    assert "BLOCK interactions.rating_range: expect_column_values_to_be_between on interactions.rating: 3 of" in result.log
    assert (root / "models" / "production.json").read_bytes() == pointer
    assert registry_versions(root) == ["v0001"]
    assert (root / "params.yaml").read_bytes() == workspace_copy.original_params
