import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pipelines import compress, config, promote, recommend, registry
from pipelines.candidates import load_candidate
from pipelines.errors import DataError, RegistryError
from pipelines.io import write_json
from pipelines.model import load_bundle
from pipelines.scoring import model_top_k, user_state
from tests.conftest import REPO
from tests.factories import (PROMOTE_PARAMS, build_candidate_workspace, next_candidate, save_candidate,
                             set_evaluation)


@pytest.fixture()
def candidate_workspace(workspace):
    return build_candidate_workspace(workspace)


def test_passed_gate_promotes(candidate_workspace):
    decision = promote.promote(candidate_workspace, PROMOTE_PARAMS)
    assert decision == {"promoted": True, "reason": "gate passed", "production": "v0001", "previous": None}
    card = registry.read_card(candidate_workspace, "v0001")
    assert card["metrics"]["model"]["test_ndcg@10"] == 0.2
    assert card["intervals"]["model"]["test_ndcg@10"] == {"low": pytest.approx(0.15), "high": pytest.approx(0.25)}
    assert card["gate"]["reasons"] == ["test_ndcg@10 above popularity: pass"]
    assert card["forced"] is False
    for key in ("git_revision", "data_version", "created_at", "triggered_by", "run_id", "params"):
        assert key in card, key
    assert set(card["files"]) == {"model.pt", "items.parquet", "interactions.parquet"}
    assert registry.production(candidate_workspace)["version"] == "v0001"


def test_card_records_trigger_and_run_id(candidate_workspace, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", "shoprec_nightly")
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "scheduled__2026-12-04")
    promote.promote(candidate_workspace, PROMOTE_PARAMS)
    card = registry.read_card(candidate_workspace, "v0001")
    assert card["triggered_by"] == "airflow:shoprec_nightly"
    assert card["run_id"] == "scheduled__2026-12-04"


def test_onnx_export_and_report_registered(candidate_workspace):
    (candidate_workspace / config.CANDIDATE_DIR / "model.onnx").write_bytes(b"onnx bytes")
    (candidate_workspace / promote.EVALUATION_PAGE).write_text("<html></html>")
    promote.promote(candidate_workspace, PROMOTE_PARAMS)
    folder = registry.verify_version(candidate_workspace, "v0001")
    assert (folder / "model.onnx").read_bytes() == b"onnx bytes"
    assert (folder / "report.html").is_file()


def served_scores(model_path, root, user_index: int, k: int) -> list[float]:
    """Return one user's top-K scores from the model at `model_path`, loaded as recommend loads it."""
    model, bundle = load_candidate(model_path)
    history = pd.read_parquet(root / config.INGESTED_DIR / "interactions.parquet")
    state = user_state([history], bundle["item_ids"], bundle["user_ids"], model.history_length)
    _, scores = model_top_k(model, np.array([user_index]), state, k)
    return [float(score) for score in scores[0]]


def test_compressed_choice_served(candidate_workspace, tmp_path):
    # The chosen model is an int8 copy of a different model, so its scores differ from model.pt's.
    other = tmp_path / "other"
    shutil.copytree(candidate_workspace / config.INGESTED_DIR, other / config.INGESTED_DIR)
    save_candidate(other, seed=7)
    chosen = candidate_workspace / "models" / "compressed" / "int8" / "model.pt"
    chosen.parent.mkdir(parents=True)
    compress.build_quantized(other / config.CANDIDATE_DIR / "model.pt", chosen, 8, {})
    (chosen.parent.parent / "chosen.onnx").write_bytes(b"int8 onnx")
    write_json({"chosen": "int8", "model_path": "models/compressed/int8/model.pt",
                "reason": "smallest within 2% of the teacher"},
               candidate_workspace / config.REPORTS_DIR / "compress_decision.json")
    gate = json.loads((candidate_workspace / config.GATE_FILE).read_text())
    gate["compression"] = {"chosen": "int8", "reason": "smallest within 2% of the teacher"}
    gate["judged_model"] = "models/compressed/int8/model.pt"
    write_json(gate, candidate_workspace / config.GATE_FILE)

    promote.promote(candidate_workspace, PROMOTE_PARAMS)

    folder = registry.verify_version(candidate_workspace, "v0001")
    assert (folder / "compressed.pt").read_bytes() == chosen.read_bytes()
    assert (folder / "model.onnx").read_bytes() == b"int8 onnx"
    assert registry.served_file(folder) == folder / "compressed.pt"
    card = registry.read_card(candidate_workspace, "v0001")
    assert card["compression"]["chosen"] == "int8"
    assert card["judged_model"] == "models/compressed/int8/model.pt"
    # Both recommend and the batch recommendations serve the compressed model, not model.pt.
    expected = served_scores(chosen, candidate_workspace, user_index=1, k=2)
    assert expected != pytest.approx(served_scores(folder / "model.pt", candidate_workspace, user_index=1, k=2),
                                     abs=1e-2)
    assert [row["score"] for row in recommend.recommend_for_user("u1", k=2)] == pytest.approx(expected)
    # The int8 kernels quantize each batch's activations with one scale, so a batch of
    # users scores slightly differently from one user alone.
    batch = pd.read_parquet(candidate_workspace / promote.RECOMMENDATIONS_FILE)
    assert batch[batch["user_id"] == "u1"]["score"].tolist() == pytest.approx(expected, abs=1e-3)


def test_trained_model_served_without_compress(candidate_workspace):
    promote.promote(candidate_workspace, PROMOTE_PARAMS)
    folder = registry.production_folder(candidate_workspace)
    assert registry.served_file(folder) == folder / "model.pt"


def test_batch_recommendations_written(candidate_workspace):
    promote.promote(candidate_workspace, PROMOTE_PARAMS)
    frame = pd.read_parquet(candidate_workspace / promote.RECOMMENDATIONS_FILE)
    assert list(frame.columns) == ["user_id", "rank", "item_id", "score", "model_version"]
    # u1 saw a and b, so two items are left; u2 saw a, c and d, so one is left.
    assert frame.groupby("user_id")["rank"].apply(list).to_dict() == {"u1": [1, 2], "u2": [1]}
    assert set(frame[frame["user_id"] == "u1"]["item_id"]) == {"c", "d"}
    assert frame[frame["user_id"] == "u2"]["item_id"].tolist() == ["b"]
    assert set(frame["model_version"]) == {"v0001"}


def test_failed_gate_keeps_production(candidate_workspace):
    promote.promote(candidate_workspace, PROMOTE_PARAMS)
    pointer_before = (candidate_workspace / config.PRODUCTION_POINTER).read_text()
    save_candidate(candidate_workspace, seed=1)
    set_evaluation(candidate_workspace, passed=False, production_version="v0001")
    decision = promote.promote(candidate_workspace, PROMOTE_PARAMS)
    assert decision["promoted"] is False
    assert decision["reason"] == "gate failed: test_ndcg@10 above popularity"
    assert (candidate_workspace / config.PRODUCTION_POINTER).read_text() == pointer_before
    assert registry.list_versions(candidate_workspace) == ["v0001"]


def test_forced_promotion_recorded(candidate_workspace):
    set_evaluation(candidate_workspace, passed=False)
    decision = promote.promote(candidate_workspace, {**PROMOTE_PARAMS, "force": True})
    assert decision["promoted"] is True
    assert decision["reason"] == "forced by promote.force; the gate failed"
    assert registry.read_card(candidate_workspace, "v0001")["forced"] is True
    assert registry.production(candidate_workspace)["history"][-1]["reason"] == decision["reason"]


def test_second_promotion_records_history(candidate_workspace, monkeypatch):
    promote.promote(candidate_workspace, PROMOTE_PARAMS)
    monkeypatch.setenv("SHOPREC_TRIGGERED_BY", "nightly-test")
    next_candidate(candidate_workspace)
    decision = promote.promote(candidate_workspace, PROMOTE_PARAMS)
    assert decision == {"promoted": True, "reason": "gate passed", "production": "v0002", "previous": "v0001"}
    entry = registry.production(candidate_workspace)["history"][-1]
    assert {key: entry[key] for key in ("action", "from", "to", "by", "reason")} == {
        "action": "promote", "from": "v0001", "to": "v0002", "by": "nightly-test", "reason": "gate passed"}
    assert registry.read_card(candidate_workspace, "v0002")["production_before"] == "v0001"


def test_same_candidate_not_registered_twice(candidate_workspace):
    promote.promote(candidate_workspace, PROMOTE_PARAMS)
    set_evaluation(candidate_workspace, passed=True, production_version="v0001")
    decision = promote.promote(candidate_workspace, PROMOTE_PARAMS)
    assert decision == {"promoted": False, "reason": "the candidate is already production version v0001",
                        "production": "v0001"}
    assert registry.list_versions(candidate_workspace) == ["v0001"]


def test_rerun_does_not_undo_rollback(candidate_workspace):
    promote.promote(candidate_workspace, PROMOTE_PARAMS)
    next_candidate(candidate_workspace)
    promote.promote(candidate_workspace, PROMOTE_PARAMS)
    registry.rollback(candidate_workspace, "v0002 recommends sold-out items")
    # gate.json still names v0001, the production model v0002 was compared with, and v0001 is production again.
    decision = promote.promote(candidate_workspace, PROMOTE_PARAMS)
    assert decision["promoted"] is False
    assert decision["reason"].startswith("the candidate is v0002, which was production before and was replaced")
    assert registry.production(candidate_workspace)["version"] == "v0001"


def test_production_moved_since_evaluate_rejected(candidate_workspace):
    promote.promote(candidate_workspace, PROMOTE_PARAMS)
    save_candidate(candidate_workspace, seed=1)
    set_evaluation(candidate_workspace, passed=True, production_version=None)
    with pytest.raises(RegistryError, match=r"production changed after the evaluate stage: the gate compared the "
                                            r"candidate with no production model, production is now v0001"):
        promote.promote(candidate_workspace, PROMOTE_PARAMS)
    assert registry.list_versions(candidate_workspace) == ["v0001"]


def test_damaged_candidate_not_registered(candidate_workspace):
    (candidate_workspace / config.CANDIDATE_DIR / "model.pt").write_bytes(b"garbage")
    with pytest.raises(RegistryError, match="cannot load model"):
        promote.promote(candidate_workspace, PROMOTE_PARAMS)
    assert registry.list_versions(candidate_workspace) == []
    assert registry.production(candidate_workspace) is None


def test_missing_gate_rejected(candidate_workspace):
    (candidate_workspace / config.GATE_FILE).unlink()
    with pytest.raises(DataError, match=r"gate\.json: file not found; run the evaluate stage first"):
        promote.promote(candidate_workspace, PROMOTE_PARAMS)


def test_candidate_without_metrics_rejected(candidate_workspace):
    write_json({"test_users": 2, "popularity": {"test_ndcg@10": 0.1}}, candidate_workspace / config.METRICS_FILE)
    with pytest.raises(DataError, match=r"metrics\.json: no metrics of the candidate \('model' section\)"):
        promote.promote(candidate_workspace, PROMOTE_PARAMS)
    assert registry.production(candidate_workspace) is None


def test_candidate_missing_gate_metric_rejected(candidate_workspace):
    write_json({"model": {"test_recall@10": 0.3}}, candidate_workspace / config.METRICS_FILE)
    with pytest.raises(DataError, match=r"metrics\.json: candidate metrics lack 'test_ndcg@10', the metric the gate "
                                        r"judged; rerun the evaluate stage"):
        promote.promote(candidate_workspace, PROMOTE_PARAMS)
    assert registry.list_versions(candidate_workspace) == []


def test_recommend_skips_seen_items(candidate_workspace):
    promote.promote(candidate_workspace, PROMOTE_PARAMS)
    rows = recommend.recommend_for_user("u1", k=10)
    assert [row["item_id"] for row in rows] and {"a", "b"}.isdisjoint(row["item_id"] for row in rows)
    assert len(rows) == 2
    assert rows[0]["version"] == "v0001"
    assert "Cap" in recommend.format_recommendations("u1", rows) or "Dress" in recommend.format_recommendations("u1", rows)


def test_recommend_says_when_fewer_left(candidate_workspace):
    promote.promote(candidate_workspace, PROMOTE_PARAMS)
    rows = recommend.recommend_for_user("u1", k=10)
    text = recommend.format_recommendations("u1", rows, requested=10)
    assert text.endswith("only 2 of the 10 requested: the user has seen every other item")
    assert "requested" not in recommend.format_recommendations("u1", rows, requested=2)


def test_recommend_unknown_user(candidate_workspace):
    promote.promote(candidate_workspace, PROMOTE_PARAMS)
    with pytest.raises(DataError, match=r"user 'nobody' not found in production model v0001 \(2 known users\)"):
        recommend.recommend_for_user("nobody")


def test_recommend_without_production(workspace):
    with pytest.raises(RegistryError, match=r"no production model: .*production\.json does not exist"):
        recommend.recommend_for_user("u1")


def test_cli_reports_error_without_traceback(workspace, capsys):
    from pipelines.cli import main

    assert main(["recommend", "--user", "196"]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error: no production model")


# ---------------------------------------------------------------- crashes

# Runs in a fresh interpreter. For step N = 0, 1, 2, ..., it copies the pristine
# workspace and forks a child that runs the change (a promotion, or a rollback)
# and kills itself with SIGKILL at its N-th filesystem step: just before a call
# of os.replace, os.rename, os.fsync or shutil.copyfile, or just after a file
# is opened for writing (which may have truncated it). N = 0 never kills and
# counts the steps. The imports happen before the fork; the model runs only in
# the children.
CRASH_DRIVER = r"""
import builtins, json, os, shutil, signal, sys
from argparse import Namespace
from pathlib import Path

from pipelines import promote, registry_cli

pristine, work, change = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC


def run(step, root):
    pid = os.fork()
    if pid:
        return os.waitpid(pid, 0)[1]
    calls = 0

    def count():
        nonlocal calls
        calls += 1
        if calls == step:
            os.kill(os.getpid(), signal.SIGKILL)

    def before(function):
        def wrapper(*args, **kwargs):
            count()
            return function(*args, **kwargs)
        return wrapper

    def after_write_open(function, writes):
        def wrapper(*args, **kwargs):
            result = function(*args, **kwargs)
            if writes(args, kwargs):
                count()
            return result
        return wrapper

    for module, name in ((os, "replace"), (os, "rename"), (os, "fsync"), (shutil, "copyfile")):
        setattr(module, name, before(getattr(module, name)))
    builtins.open = after_write_open(builtins.open, lambda args, kwargs: any(
        flag in (args[1] if len(args) > 1 else kwargs.get("mode", "r")) for flag in "wax+"))
    os.open = after_write_open(os.open, lambda args, kwargs: bool(
        (args[1] if len(args) > 1 else kwargs.get("flags", 0)) & WRITE_FLAGS))
    os.environ["SHOPREC_WORKSPACE"] = str(root)
    if change == "promote":
        promote.promote(root, {"force": False, "recommendations_k": 3})
    else:
        registry_cli.change_production(root, Namespace(action="rollback", reason="crash test"))
    (root / "calls").write_text(str(calls))
    os._exit(0)


statuses = {}
step = 0
while True:
    root = work / f"step{step}"
    shutil.copytree(pristine, root)
    statuses[step] = run(step, root)
    if step == 0:
        total = int((root / "calls").read_text())
    elif step >= total:
        break
    step += 1
print(json.dumps({"calls": total, "statuses": statuses}))
"""


def crash_at_every_step(pristine, work, change):
    """Run the change once per filesystem step, killed at that step; return (calls, {step: wait status})."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", CRASH_DRIVER, str(pristine), str(work), change], env=env,
                            capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return report["calls"], {int(step): status for step, status in report["statuses"].items()}


def assert_production_usable(root, allowed):
    """The pointer names one of `allowed`, its files match the card, the model loads, the history agrees."""
    pointer = registry.production(root)
    assert pointer["version"] in allowed
    assert pointer["history"][-1]["to"] == pointer["version"]
    folder = registry.verify_version(root, pointer["version"])
    load_bundle(folder / "model.pt")
    assert recommend.batch_recommendations(folder, 2)["model_version"].eq(pointer["version"]).all()


def test_crash_during_promotion_leaves_old_or_new(candidate_workspace, tmp_path):
    promote.promote(candidate_workspace, PROMOTE_PARAMS)
    next_candidate(candidate_workspace)
    pristine = tmp_path / "pristine"
    shutil.copytree(candidate_workspace, pristine)

    calls, statuses = crash_at_every_step(pristine, tmp_path / "runs", "promote")
    assert calls >= 8  # copies, fsyncs and renames of the version, the pointer and the recommendations
    assert statuses[0] == 0
    for step in range(1, calls + 1):
        root = tmp_path / "runs" / f"step{step}"
        assert os.WIFSIGNALED(statuses[step]), f"step {step} was not killed"
        assert_production_usable(root, {"v0001", "v0002"})
        # Running the stage again finishes the promotion without a duplicate version.
        promote.promote(root, PROMOTE_PARAMS)
        assert registry.production(root)["version"] == "v0002", f"step {step}"
        assert registry.list_versions(root) == ["v0001", "v0002"], f"step {step}"
        frame = pd.read_parquet(root / promote.RECOMMENDATIONS_FILE)
        assert set(frame["model_version"]) == {"v0002"}, f"step {step}"


def test_crash_during_rollback_leaves_old_or_new(candidate_workspace, tmp_path):
    promote.promote(candidate_workspace, PROMOTE_PARAMS)
    next_candidate(candidate_workspace)
    promote.promote(candidate_workspace, PROMOTE_PARAMS)
    pristine = tmp_path / "pristine"
    shutil.copytree(candidate_workspace, pristine)

    calls, statuses = crash_at_every_step(pristine, tmp_path / "runs", "rollback")
    assert calls >= 4
    assert registry.production(tmp_path / "runs" / "step0")["version"] == "v0001"
    for step in range(1, calls + 1):
        root = tmp_path / "runs" / f"step{step}"
        assert os.WIFSIGNALED(statuses[step]), f"step {step} was not killed"
        assert_production_usable(root, {"v0001", "v0002"})


def test_git_revision_ignores_dvc_lock(tmp_path):
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    (tmp_path / "params.yaml").write_text("train: {}\n")
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "start"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    assert not promote.git_revision(tmp_path).endswith("-dirty")
    (tmp_path / "params.yaml").write_text("train: {epochs: 1}\n")
    assert promote.git_revision(tmp_path).endswith("-dirty")


def test_missing_judged_model_not_registered(candidate_workspace):
    gate = json.loads((candidate_workspace / config.GATE_FILE).read_text())
    gate["judged_model"] = "models/compressed/int8/model.pt"
    write_json(gate, candidate_workspace / config.GATE_FILE)
    with pytest.raises(DataError, match=r"judged model models/compressed/int8/model\.pt not found"):
        promote.promote(candidate_workspace, PROMOTE_PARAMS)
    assert registry.list_versions(candidate_workspace) == []
    assert registry.production(candidate_workspace) is None
