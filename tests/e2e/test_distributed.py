"""Real Ray Train runs of the train stage: a two-node cluster, a killed worker, a crashed stage.

Each run trains on a slice of MovieLens-100K (the first 300 users), so an
epoch takes about a second and Ray's start-up dominates.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from pipelines import augment, config, split
from tests.conftest import REPO, update_params

pytestmark = pytest.mark.e2e

CLUSTER_SCRIPT = REPO / "infra" / "ray" / "local-cluster.sh"
USERS = 300


@pytest.fixture(scope="module")
def slice_tables(movielens_tables):
    interactions = movielens_tables["interactions"]
    kept_users = sorted(interactions["user_id"].unique(), key=int)[:USERS]
    interactions = interactions[interactions["user_id"].isin(kept_users)]
    users = movielens_tables["users"][movielens_tables["users"]["user_id"].isin(kept_users)]
    return {"items": movielens_tables["items"], "users": users,
            **split.split_with_coldstart(interactions.reset_index(drop=True), {"protocol": "leave_one_out"})}


@pytest.fixture()
def train_workspace(tmp_path, slice_tables):
    """A workspace holding the ingested and split slice, ready for the train stage."""
    shutil.copyfile(REPO / config.PARAMS_FILE, tmp_path / config.PARAMS_FILE)
    update_params(tmp_path, {"train.epochs": 3, "train.patience": 0, "train.max_failures": 1})
    for folder, names in ((config.INGESTED_DIR, ("items", "users")), (config.SPLIT_DIR, (*config.SPLITS, "coldstart"))):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            slice_tables[name].to_parquet(tmp_path / folder / f"{name}.parquet")
    augment.augment(tmp_path, config.section(config.load_params(tmp_path / config.PARAMS_FILE), "augment"))
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # Unix socket paths must stay short
    yield {"root": tmp_path, "ray_tmp": ray_tmp}
    stop_ray_processes(ray_tmp)
    shutil.rmtree(ray_tmp, ignore_errors=True)


def stage_env(workspace, **extra) -> dict[str, str]:
    env = {**os.environ, "SHOPREC_WORKSPACE": str(workspace["root"]), "RAY_TMPDIR": str(workspace["ray_tmp"]),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra}
    if "RAY_ADDRESS" not in extra:
        env.pop("RAY_ADDRESS", None)
    return env


def start_train(workspace, **extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipelines.train"], cwd=REPO, env=stage_env(workspace, **extra),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def run_train(workspace, timeout=300, **extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.train"], cwd=REPO, env=stage_env(workspace, **extra),
                          capture_output=True, text=True, timeout=timeout)


def train_report(root: Path) -> dict:
    return json.loads((root / "reports" / "train_timing.json").read_text())


def final_valid_ndcg(root: Path) -> float:
    return train_report(root)["history"][-1]["val_ndcg@10"]


def registered_checkpoints(root: Path) -> int:
    """Checkpoints Ray Train has registered (and would restore from), per its snapshot file."""
    count = 0
    for snapshot in (root / "checkpoints").glob("train-*/checkpoint_manager_snapshot.json"):
        try:
            count += len(json.loads(snapshot.read_text()).get("checkpoint_results", []))
        except (OSError, ValueError):
            pass  # being rewritten right now
    return count


def ray_processes(ray_tmp: Path) -> list[psutil.Process]:
    """Processes of the Ray instance whose temp folder is `ray_tmp`, found through its raylet's children."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(str(ray_tmp) in part for part in process.info["cmdline"] or []):
            found.append(process)
            found.extend(process.children(recursive=True))
    return found


def stop_ray_processes(ray_tmp: Path) -> None:
    for process in ray_processes(ray_tmp):
        try:
            process.kill()
        except psutil.Error:
            pass


def addresses_in_logs(ray_folder: Path) -> set[str]:
    """IPv4 addresses that Ray's session logs under `ray_folder` mention."""
    found = set()
    for path in ray_folder.glob("session_*/logs/*"):
        if path.is_file():
            found |= set(re.findall(r"\b(?:\d{1,3}\.){3}\d{1,3}\b", path.read_text(errors="ignore")))
    return found - {"0.0.0.0"}


def wait_for(condition, timeout: float, description: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {description}")


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"


@pytest.fixture()
def two_node_cluster(tmp_path):
    port = 6400 + os.getpid() % 500
    env = {**os.environ, "RAY_HEAD_PORT": str(port), "PYTHON": sys.executable,
           "RAY_CLUSTER_DIR": tempfile.mkdtemp(prefix="rayc", dir="/tmp")}
    started = subprocess.run(["bash", str(CLUSTER_SCRIPT), "start"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert started.returncode == 0, started.stderr
    yield {"address": f"127.0.0.1:{port}", "folder": Path(env["RAY_CLUSTER_DIR"])}
    subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop"], env=env, capture_output=True, timeout=60)
    shutil.rmtree(env["RAY_CLUSTER_DIR"], ignore_errors=True)


def test_two_node_cluster_in_sync(train_workspace, two_node_cluster):
    root = train_workspace["root"]
    update_params(root, {"train.epochs": 1, "train.check_parameter_sync": True})
    assert_ok(run_train(train_workspace, RAY_ADDRESS=two_node_cluster["address"]))
    report = train_report(root)
    assert len(report["worker_nodes"]) == 2
    assert len(set(report["worker_nodes"])) == 2, "both workers ran on the same node"
    assert report["history"][0]["parameter_max_abs_diff"] == 0.0
    assert addresses_in_logs(two_node_cluster["folder"]) == {"127.0.0.1"}


def test_too_many_workers_rejected(train_workspace, two_node_cluster):
    update_params(train_workspace["root"], {"train.num_workers": 3})
    started = time.monotonic()
    result = run_train(train_workspace, timeout=120, RAY_ADDRESS=two_node_cluster["address"])
    assert result.returncode == 1
    assert "train.num_workers (3) x train.cpus_per_worker (1) needs 3 CPU(s), but the Ray cluster has 2" in result.stderr
    assert time.monotonic() - started < 60


def test_unreachable_cluster_fails_fast(train_workspace):
    from tests.pipelines.test_cluster import closed_port

    started = time.monotonic()
    result = run_train(train_workspace, timeout=60, RAY_ADDRESS=f"127.0.0.1:{closed_port()}")
    assert result.returncode == 1
    assert "no Ray cluster is listening there" in result.stderr
    assert "change RAY_ADDRESS" in result.stderr
    assert time.monotonic() - started < 30


def test_killed_worker_resumes(train_workspace, tmp_path_factory):
    root = train_workspace["root"]
    baseline_root = tmp_path_factory.mktemp("baseline")
    shutil.copytree(root, baseline_root, dirs_exist_ok=True)
    assert_ok(run_train({"root": baseline_root, "ray_tmp": train_workspace["ray_tmp"]}))
    expected = final_valid_ndcg(baseline_root)

    update_params(root, {"train.epochs": 3})
    process = start_train(train_workspace)
    wait_for(lambda: registered_checkpoints(root) >= 1, 180, "the first checkpoint")
    time.sleep(1.0)  # into the second epoch
    workers = [p for p in ray_processes(train_workspace["ray_tmp"]) if "RayTrainWorker" in " ".join(p.cmdline())]
    assert workers, "no training worker process found"
    workers[0].send_signal(signal.SIGKILL)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-4000:]
    report = train_report(root)
    assert "resuming from checkpoint" in output, output[-6000:]
    assert report["resumed_from_epoch"] is not None
    assert len(report["history"]) == 3
    assert abs(final_valid_ndcg(root) - expected) < 0.01


def test_crashed_stage_resumes(train_workspace):
    root = train_workspace["root"]
    update_params(root, {"train.epochs": 4})
    process = start_train(train_workspace)
    wait_for(lambda: registered_checkpoints(root) >= 2, 180, "two checkpoints")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    stop_ray_processes(train_workspace["ray_tmp"])

    assert_ok(run_train(train_workspace))
    report = train_report(root)
    assert report["resumed_from_epoch"] is not None
    assert report["resumed_from_epoch"] >= 1
    assert report["epochs"] < 4
    assert [epoch["epoch"] for epoch in report["history"]] == [0, 1, 2, 3]


def test_fresh_start_ignores_checkpoints(train_workspace):
    root = train_workspace["root"]
    update_params(root, {"train.epochs": 1})
    assert_ok(run_train(train_workspace))
    update_params(root, {"train.resume": False})
    assert_ok(run_train(train_workspace))
    assert train_report(root)["resumed_from_epoch"] is None
    assert train_report(root)["epochs"] == 1
