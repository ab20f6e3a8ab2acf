import copy
import hashlib
import json

import pytest
import yaml

from pipelines import compress, config
from pipelines.errors import ConfigError
from tests.conftest import REPO
from tests.pipelines.conftest import TRAIN_PARAMS

PARAMS = yaml.safe_load((REPO / config.PARAMS_FILE).read_text())["compress"]


def params_with(changes: dict) -> dict:
    params = copy.deepcopy(PARAMS)
    for dotted, value in changes.items():
        target = params
        *parents, key = dotted.split(".")
        for parent in parents:
            target = target[parent]
        target[key] = value
    return params


def test_repository_params_valid():
    compress.check_params(copy.deepcopy(PARAMS))
    compress.check_against_teacher(copy.deepcopy(PARAMS), {"embedding_dim": 64})


@pytest.mark.parametrize("changes, match", [
    ({"prune.sparsities": [0.5, 1.0]}, r"compress\.prune\.sparsities\[1\] is 1\.0, expected a sparsity in \[0, 1\)"),
    ({"prune.sparsities": [-0.2]}, r"compress\.prune\.sparsities\[0\] is -0\.2"),
    ({"prune.sparsities": 0.5}, r"compress\.prune\.sparsities is 0\.5, expected a list"),
    ({"prune.scope": "rows"}, r"compress\.prune\.scope is 'rows'"),
    ({"prune.finetune_steps": -1}, r"compress\.prune\.finetune_steps is -1"),
    ({"quantize.bits": [8, 2]}, r"compress\.quantize\.bits\[1\] is 2, expected one of \[4, 8\]"),
    ({"quantize.bits": [8, 8]}, r"compress\.quantize\.bits is \[8, 8\], which repeats a bit width"),
    ({"prune.sparsities": [0.5, 0.501]}, r"compress\.prune\.sparsities is \[0\.5, 0\.501\], whose candidates"),
    ({"policy.max_ndcg_drop": 2}, r"compress\.policy\.max_ndcg_drop is 2"),
    ({"measure.latency_users": 0}, r"compress\.measure\.latency_users is 0"),
    ({"teacher": ""}, r"compress\.teacher is '', expected a model file path"),
    ({"onnx.tolerance": 0}, r"compress\.onnx\.tolerance is 0"),
])
def test_bad_params_rejected(changes, match):
    with pytest.raises(ConfigError, match=match):
        compress.check_params(params_with(changes))


@pytest.mark.parametrize("changes, match", [
    ({"distill.embedding_dim": 64}, r"compress\.distill\.embedding_dim is 64, but the student must be smaller"),
    ({"distill.embedding_dim": 96}, r"compress\.distill\.embedding_dim is 96, but the student must be smaller"),
    ({"distill.quantize_bits": 4}, r"compress\.distill\.quantize_bits is 4, but 4-bit rows need an embedding dim"),
    ({"quantize.bits": [4]}, None),
])
def test_params_checked_against_teacher(changes, match):
    params = params_with(changes)
    if match is None:
        compress.check_against_teacher(params, {"embedding_dim": 64})
        with pytest.raises(ConfigError, match=r"compress\.quantize\.bits\[0\] is 4, but 4-bit rows need"):
            compress.check_against_teacher(params, {"embedding_dim": 48})
        return
    with pytest.raises(ConfigError, match=match):
        compress.check_against_teacher(params, {"embedding_dim": 64})


def test_missing_teacher_names_param(tmp_path):
    params = params_with({"teacher": "models/none/model.pt"})
    with pytest.raises(ConfigError, match=r"compress\.teacher: .*model\.pt: model file not found"):
        compress.compress(tmp_path, params, TRAIN_PARAMS)
    assert not (tmp_path / compress.COMPRESSED_DIR).exists()


def test_corrupt_teacher_names_param(tmp_path):
    (tmp_path / "teacher.pt").write_bytes(b"\x00" * 64)
    with pytest.raises(ConfigError, match=r"compress\.teacher: .*teacher\.pt: cannot load model"):
        compress.compress(tmp_path, params_with({"teacher": "teacher.pt"}), TRAIN_PARAMS)


def test_failed_candidate_reported_and_others_built(tmp_path, small_workspace):
    root = small_workspace[0]
    failed = compress.attempt("int8", tmp_path, lambda target: compress.build_quantized(
        tmp_path / "missing.pt", target, 8, {}))
    built = compress.attempt("int4", tmp_path, lambda target: compress.build_quantized(
        root / "models" / "candidate" / "model.pt", target, 4, {}))
    assert failed["status"] == "failed"
    assert failed["error"].startswith("RegistryError: ")
    assert "missing.pt: model file not found" in failed["error"]
    assert not (tmp_path / "int8").exists()
    assert built["status"] == "ok"
    assert (tmp_path / "int4" / "model.pt").is_file()
    quantized_student = compress.attempt("student_int8", tmp_path, lambda target: compress.build_quantized_student(
        {"status": "failed"}, target, 8))
    assert quantized_student["error"] == "RuntimeError: the student candidate failed, so there is nothing to quantize"


def test_compress_writes_candidates_reports_and_decision(small_workspace):
    root = small_workspace[0]
    teacher_file = root / "models" / "candidate" / "model.pt"
    teacher_digest = hashlib.sha256(teacher_file.read_bytes()).hexdigest()
    params = params_with({"prune.sparsities": [0.5], "prune.finetune_steps": 10, "prune.eval_every": 5,
                          "distill.enabled": False, "measure.latency_users": 20, "measure.batch_size": 64,
                          "policy.max_latency_p99_ms": None})
    decision = compress.compress(root, params, TRAIN_PARAMS)

    report = json.loads((root / compress.REPORT).read_text())
    rows = report["compress"]
    assert set(rows) == {"teacher", "prune_50", "int8", "int4"}
    for name, row in rows.items():
        assert row["status"] == "ok", row
        for key in ("test_ndcg@10", "test_recall@10", "size_bytes", "parameters", "peak_memory_bytes",
                    "latency_p50_ms", "latency_p99_ms", "throughput_users_per_s"):
            assert isinstance(row[key], (int, float)), (name, key)
        assert row["latency_p50_ms"] <= row["latency_p99_ms"]
    assert rows["int8"]["size_bytes"] * 3 < rows["teacher"]["size_bytes"]
    assert rows["teacher"]["test_ndcg@10_ratio_to_teacher"] == pytest.approx(1.0)
    assert rows["teacher"]["test_ndcg@10_paired_difference_stderr"] == 0.0
    assert rows["int8"]["test_ndcg@10_ratio_to_teacher"] == pytest.approx(
        rows["int8"]["test_ndcg@10"] / rows["teacher"]["test_ndcg@10"])
    assert rows["prune_50"]["recipe"]["sparsity"] == 0.5
    assert rows["int4"]["recipe"]["embedding_bits"] == 4

    card = json.loads((root / compress.COMPRESSED_DIR / "prune_50" / "card.json").read_text())
    assert card["sparsity"]["total"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert card["size_bytes"] == (root / compress.COMPRESSED_DIR / "prune_50" / "model.pt").stat().st_size

    assert decision == json.loads((root / compress.DECISION).read_text())
    assert decision["chosen"] in rows
    assert (root / decision["model_path"]).is_file()
    assert decision["onnx"]["passed"] is True
    assert (root / decision["onnx_path"]).is_file()
    assert (root / compress.PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert hashlib.sha256(teacher_file.read_bytes()).hexdigest() == teacher_digest


def test_quantized_student_recipe_nests_student(tmp_path, small_workspace):
    student = {"status": "ok", "path": small_workspace[0] / "models" / "candidate" / "model.pt",
               "recipe": {"method": "knowledge distillation", "embedding_dim": 8}}
    details = compress.build_quantized_student(student, tmp_path / "model.pt", 8)
    assert details["recipe"]["method"] == "post-training quantization"
    assert details["recipe"]["student_recipe"] == student["recipe"]
