import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from pipelines import config, orchestration
from pipelines.errors import ConfigError, DataError
from tests.conftest import REPO, update_params

STAGES_TODAY = ["ingest", "validate", "split", "augment", "train", "compress", "evaluate", "coldstart", "promote"]


def write_dvc_yaml(root: Path, stages: dict) -> None:
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))


def repository_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


# ---------------------------------------------------------------- the stage list


def test_repository_stage_order():
    stages = orchestration.read_stages(REPO)
    assert [stage.name for stage in stages] == STAGES_TODAY


def test_stage_docs_come_from_modules():
    stages = {stage.name: stage for stage in orchestration.read_stages(REPO)}
    assert stages["validate"].doc.startswith("Validate stage: the data-quality gate")
    assert "reports/validation.json" in stages["validate"].outs
    assert stages["train"].params == ("train",)


def test_new_stages_join_in_dependency_order(tmp_path):
    """Stages appended at the end of dvc.yaml still run where their inputs and outputs put them."""
    stages = repository_stages()
    for name in ("augment", "compress", "coldstart"):
        stages.pop(name, None)  # re-added below, at the end of the file
    stages["train"]["deps"] = [dep if dep != "data/split" else "data/augmented" for dep in stages["train"]["deps"]]
    stages["evaluate"]["deps"] = [dep if dep != "models/candidate" else "models/compressed"
                                  for dep in stages["evaluate"]["deps"]]
    stages["compress"] = {"cmd": "python -m pipelines.compress", "deps": ["models/candidate"],
                          "params": ["compress"], "outs": ["models/compressed"]}
    stages["augment"] = {"cmd": "python -m pipelines.augment", "deps": ["data/split/train.parquet"],
                         "params": ["augment"], "outs": ["data/augmented"]}
    write_dvc_yaml(tmp_path, stages)
    names = [stage.name for stage in orchestration.read_stages(tmp_path)]
    assert names == ["ingest", "validate", "split", "augment", "train", "compress", "evaluate", "promote"]


def test_cycle_is_rejected(tmp_path):
    write_dvc_yaml(tmp_path, {"a": {"cmd": "x", "deps": ["b.txt"], "outs": ["a.txt"]},
                              "b": {"cmd": "y", "deps": ["a.txt"], "outs": ["b.txt"]}})
    with pytest.raises(ConfigError, match="the stages a, b depend on each other in a cycle"):
        orchestration.read_stages(tmp_path)


def test_foreach_stage_is_rejected(tmp_path):
    write_dvc_yaml(tmp_path, {"train": {"foreach": [1, 2], "do": {"cmd": "echo ${item}"}}})
    with pytest.raises(ConfigError, match="stage 'train' uses foreach or matrix"):
        orchestration.read_stages(tmp_path)


def test_missing_pipeline_file(tmp_path):
    with pytest.raises(ConfigError, match=r"dvc\.yaml: pipeline file not found"):
        orchestration.read_stages(tmp_path)


def test_stage_without_command(tmp_path):
    write_dvc_yaml(tmp_path, {"ingest": {"deps": ["a"]}})
    with pytest.raises(ConfigError, match="stage 'ingest' has no 'cmd'"):
        orchestration.read_stages(tmp_path)


# ---------------------------------------------------------------- running stages with real DVC

FAILING_STAGE = """\
from pipelines.cli import run_stage
from pipelines.errors import DataError


def stage():
    raise DataError("interactions.parquet: rating 9.0 is above rating_max 5.0")


run_stage("check", stage)
"""


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory):
    """A tiny DVC project: `copy` copies input.txt to out.txt, `check` rejects its input, `crash` exits 3."""
    root = tmp_path_factory.mktemp("dvc_repo")
    env = orchestration.stage_environment(root, {"PYTHONPATH": str(REPO)})
    subprocess.run(orchestration.dvc_command("init", "--no-scm", "-q"), cwd=root, env=env, check=True)
    (root / "input.txt").write_text("one\n")
    (root / "params.yaml").write_text("copy:\n  times: 1\n")
    (root / "check.py").write_text(FAILING_STAGE)
    write_dvc_yaml(root, {
        "copy": {"cmd": "python -c \"import shutil; shutil.copyfile('input.txt', 'out.txt')\"",
                 "deps": ["input.txt"], "params": ["copy.times"], "outs": ["out.txt"]},
        "check": {"cmd": "python check.py", "deps": ["out.txt"]},
        "crash": {"cmd": "python -c \"raise SystemExit(3)\"", "deps": ["out.txt"]},
    })
    subprocess.run(orchestration.dvc_command("remote", "add", "--default", "local", str(root / "remote")),
                   cwd=root, env=env, check=True)
    return root, env


def test_stage_runs_then_skips_unchanged(dvc_repo, caplog):
    root, env = dvc_repo
    caplog.set_level("INFO", logger="pipelines.orchestration")
    assert orchestration.run_stage(root, "copy", env).outcome == "ran"
    assert (root / "out.txt").read_text() == "one\n"
    assert orchestration.run_stage(root, "copy", env).outcome == "unchanged"
    assert "stage 'copy' skipped by DVC: its code, dependencies and params did not change" in caplog.text


def test_stage_restored_from_run_cache(dvc_repo):
    root, env = dvc_repo
    orchestration.run_stage(root, "copy", env)
    (root / "input.txt").write_text("two\n")
    assert orchestration.run_stage(root, "copy", env).outcome == "ran"
    (root / "input.txt").write_text("one\n")
    assert orchestration.run_stage(root, "copy", env).outcome == "restored from the run cache"
    assert (root / "out.txt").read_text() == "one\n"


def test_input_error_is_recognised(dvc_repo):
    root, env = dvc_repo
    orchestration.run_stage(root, "copy", env)
    with pytest.raises(orchestration.StageFailed, match="stage 'check' failed .*rejected its input: "
                                                       "interactions.parquet: rating 9.0") as failure:
        orchestration.run_stage(root, "check", env)
    assert failure.value.input_error.startswith("interactions.parquet: rating 9.0 is above rating_max 5.0")


def test_crash_is_not_an_input_error(dvc_repo):
    root, env = dvc_repo
    orchestration.run_stage(root, "copy", env)
    with pytest.raises(orchestration.StageFailed, match="stage 'crash' failed .*see the output above") as failure:
        orchestration.run_stage(root, "crash", env)
    assert failure.value.input_error is None
    assert any("exited with 3" in line for line in failure.value.tail)


def test_publish_pushes_to_default_remote(dvc_repo):
    root, env = dvc_repo
    orchestration.run_stage(root, "copy", env)
    shutil.rmtree(root / "remote", ignore_errors=True)
    summary = orchestration.publish(root, None, env)
    assert summary == {"remote": "local", "pushed": 1}
    assert len([path for path in (root / "remote").rglob("*") if path.is_file()]) == 1
    assert orchestration.publish(root, None, env) == {"remote": "local", "pushed": 0}


def test_publish_unknown_remote_fails(dvc_repo):
    root, env = dvc_repo
    with pytest.raises(orchestration.StageFailed, match="stage 'publish' failed"):
        orchestration.publish(root, "nowhere", env)


def test_no_default_remote(tmp_path):
    env = orchestration.stage_environment(tmp_path)
    subprocess.run(orchestration.dvc_command("init", "--no-scm", "-q"), cwd=tmp_path, env=env, check=True)
    with pytest.raises(ConfigError, match="no default DVC remote; run `make dvc-init`"):
        orchestration.publish(tmp_path, None, env)


def test_interrupted_command_leaves_no_process(tmp_path):
    """A task timeout interrupts the runner; the command and its children must not outlive it."""
    def interrupt(signum, frame):
        raise TimeoutError("task timed out")

    previous = signal.signal(signal.SIGALRM, interrupt)
    pid_file = tmp_path / "child.pid"
    signal.alarm(2)
    try:
        with pytest.raises(TimeoutError):
            orchestration.run_command(["sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"], tmp_path, os.environ)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------- the gate


def write_gate(root: Path, passed: bool) -> None:
    checks = [{"name": "test_ndcg@10 above popularity", "passed": passed}]
    (root / config.GATE_FILE).write_text(json.dumps({"passed": passed, "checks": checks}))


def test_gate_passed(workspace):
    write_gate(workspace, True)
    assert orchestration.gate_decision(workspace) == orchestration.GateDecision(True, "gate passed")


def test_gate_failed_names_check(workspace):
    write_gate(workspace, False)
    decision = orchestration.gate_decision(workspace)
    assert decision.promote is False
    assert decision.reason == "gate failed: test_ndcg@10 above popularity; production unchanged"


def test_gate_failed_but_forced(workspace):
    write_gate(workspace, False)
    update_params(workspace, {"promote.force": True})
    decision = orchestration.gate_decision(workspace)
    assert decision.promote is True
    assert "but promote.force is set" in decision.reason


def test_gate_file_missing(workspace):
    with pytest.raises(DataError, match=r"gate\.json: file not found; the evaluate stage writes it"):
        orchestration.gate_decision(workspace)


def test_gate_file_invalid(workspace):
    (workspace / config.GATE_FILE).write_text("{passed")
    with pytest.raises(DataError, match=r"gate\.json: invalid JSON"):
        orchestration.gate_decision(workspace)
