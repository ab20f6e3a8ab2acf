"""Compress stage: turn the trained model into smaller candidates, measure them all, pick one.

Run as `python -m pipelines.compress` (the DVC stage `compress`, after train).
From the teacher (`compress.teacher`, the train stage's model) it builds:

- prune_NN: magnitude pruning to NN% sparsity, a masked fine-tune, saved sparse
  (pipelines/prune.py);
- intB: B-bit per-row quantized tables and int8 linear layers (pipelines/quantize.py);
- student: a smaller two-tower distilled from the teacher through Ray Train
  (pipelines/distill.py), and student_intB, the student quantized.

A candidate that fails is reported with its error and the others go on. The
teacher and every candidate are then measured in this one run on the test
split: NDCG@K and Recall@K, size on disk, parameters, peak memory when
loaded, p50/p99 top-K latency for one user on one thread, and batch
throughput. The policy (pipelines/policy.py) picks the model to ship, which
is exported to ONNX and checked against PyTorch.

Writes models/compressed/ (one folder per candidate with model.pt and
card.json, plus chosen.onnx), reports/compression.json (all measurements,
under `compress`), reports/compress_decision.json (the choice and its
reason) and reports/compression.png (quality against size and latency).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipelines import candidates, cluster, config, distill, evaluate, measure, policy, prune, quantize
from pipelines.errors import ConfigError, RegistryError
from pipelines.io import write_json
from pipelines.model import TwoTower, load_bundle
from pipelines.scoring import user_state

log = logging.getLogger(__name__)

COMPRESSED_DIR = Path("models/compressed")
REPORT = config.REPORTS_DIR / "compression.json"
DECISION = config.REPORTS_DIR / "compress_decision.json"
PLOT = config.REPORTS_DIR / "compression.png"
ONNX_FILE = "chosen.onnx"
# The keys of the train section this stage reads: the fine-tune's batches and the student's Ray run.
TRAIN_KEYS = ("seed", "batch_size", "weight_decay", "dropout", "num_negatives", "num_workers", "cpus_per_worker",
              "use_gpu", "ray_address", "max_failures")


# ---------------------------------------------------------------- params


def positive_int(params: dict[str, Any], key: str, prefix: str, minimum: int = 1) -> int:
    value = params.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"params.yaml: {prefix}.{key} is {value!r}, expected an integer >= {minimum}")
    return value


def positive_number(params: dict[str, Any], key: str, prefix: str) -> float:
    value = params.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"params.yaml: {prefix}.{key} is {value!r}, expected a positive number")
    return float(value)


def section_of(params: dict[str, Any], key: str) -> dict[str, Any]:
    value = params.get(key)
    if not isinstance(value, dict):
        raise ConfigError(f"params.yaml: compress.{key} is missing or not a mapping")
    return value


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """Validate everything that does not depend on the teacher; errors name the param."""
    if not isinstance(params.get("teacher"), str) or not params["teacher"]:
        raise ConfigError(f"params.yaml: compress.teacher is {params.get('teacher')!r}, expected a model file path")
    positive_int(params, "k", "compress")

    prune_params = section_of(params, "prune")
    sparsities = prune_params.get("sparsities")
    if not isinstance(sparsities, list):
        raise ConfigError(f"params.yaml: compress.prune.sparsities is {sparsities!r}, expected a list")
    for index, value in enumerate(sparsities):
        prune.check_sparsity(value, f"compress.prune.sparsities[{index}]")
    names = [f"prune_{round(100 * value)}" for value in sparsities]
    if len(set(names)) < len(names):
        raise ConfigError(f"params.yaml: compress.prune.sparsities is {sparsities}, whose candidates {names} "
                          "repeat a name; give sparsities that differ by at least 0.01")
    prune.check_scope(prune_params.get("scope"), "compress.prune.scope")
    positive_int(prune_params, "finetune_steps", "compress.prune", minimum=0)
    positive_int(prune_params, "eval_every", "compress.prune")
    positive_number(prune_params, "learning_rate", "compress.prune")

    bits = section_of(params, "quantize").get("bits")
    if not isinstance(bits, list):
        raise ConfigError(f"params.yaml: compress.quantize.bits is {bits!r}, expected a list")
    for index, value in enumerate(bits):
        quantize.check_bits(value, f"compress.quantize.bits[{index}]")
    if len(set(bits)) < len(bits):
        raise ConfigError(f"params.yaml: compress.quantize.bits is {bits}, which repeats a bit width")

    if not isinstance(section_of(params, "distill").get("enabled"), bool):
        raise ConfigError("params.yaml: compress.distill.enabled must be true or false")

    measure_params = section_of(params, "measure")
    positive_int(measure_params, "latency_users", "compress.measure")
    positive_int(measure_params, "batch_size", "compress.measure")
    policy.check_policy(section_of(params, "policy"))
    positive_number(section_of(params, "onnx"), "tolerance", "compress.onnx")
    return params


def check_against_teacher(params: dict[str, Any], teacher_config: dict[str, Any]) -> None:
    """Validate the params that depend on the teacher's shape."""
    dim = int(teacher_config["embedding_dim"])
    for index, bits in enumerate(params["quantize"]["bits"]):
        quantize.check_bits(bits, f"compress.quantize.bits[{index}]", dim)
    settings = params["distill"]
    if settings["enabled"]:
        distill.check_settings(settings, dim)
        student_bits = settings.get("quantize_bits")
        if student_bits is not None:
            quantize.check_bits(student_bits, "compress.distill.quantize_bits", settings["embedding_dim"])


def load_teacher(path: Path) -> tuple[TwoTower, dict[str, Any]]:
    try:
        return load_bundle(path)
    except RegistryError as error:
        raise ConfigError(f"params.yaml: compress.teacher: {error}; run the train stage first") from error


# ---------------------------------------------------------------- candidates


def build_all(folder: Path, teacher_path: Path, params: dict[str, Any], train_params: dict[str, Any],
              data: dict[str, Any], root: Path) -> list[dict[str, Any]]:
    """Build every candidate into `folder`; each returns a row with status "ok" or "failed"."""
    teacher_digest = hashlib.sha256(teacher_path.read_bytes()).hexdigest()
    source = {"teacher": params["teacher"], "teacher_sha256": teacher_digest}
    arrays = training_arrays(train_params, data, teacher_path)
    rows = []
    prune_params = params["prune"]
    for sparsity in prune_params["sparsities"]:
        name = f"prune_{round(100 * sparsity)}"
        rows.append(attempt(name, folder, lambda target, s=sparsity: build_pruned(
            teacher_path, target, s, prune_params, train_params, arrays, source)))
    for bits in params["quantize"]["bits"]:
        rows.append(attempt(f"int{bits}", folder, lambda target, b=bits: build_quantized(
            teacher_path, target, b, {**source, "quantized_from": "teacher"})))
    settings = params["distill"]
    if settings["enabled"]:
        student = attempt("student", folder, lambda target: build_student(
            teacher_path, target, settings, train_params, data, root, source))
        rows.append(student)
        bits = settings.get("quantize_bits")
        if bits is not None:
            rows.append(attempt(f"student_int{bits}", folder, lambda target: build_quantized_student(
                student, target, bits)))
    return rows


def build_quantized_student(student: dict[str, Any], target: Path, bits: int) -> dict[str, Any]:
    if student["status"] != "ok":
        raise RuntimeError("the student candidate failed, so there is nothing to quantize")
    return build_quantized(student["path"], target, bits, {"quantized_from": "student",
                                                            "student_recipe": student["recipe"]})


def attempt(name: str, folder: Path, build: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Run one candidate's build; any exception marks only this candidate as failed."""
    target = folder / name / "model.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    try:
        details = build(target)
    except Exception as error:  # a failed candidate is a result: report it and build the others
        log.exception("candidate %s failed", name)
        shutil.rmtree(target.parent, ignore_errors=True)
        return {"name": name, "status": "failed", "error": f"{type(error).__name__}: {error}"}
    log.info("built candidate %s in %.1f s", name, time.time() - started)
    return {"name": name, "status": "ok", "path": target, "build_seconds": time.time() - started, **details}


def training_arrays(train_params: dict[str, Any], data: dict[str, Any], teacher_path: Path) -> dict[str, Any]:
    from pipelines import train

    _, bundle = load_bundle(teacher_path)
    shape = {key: bundle["config"][key] for key in ("embedding_dim", "history_length")}
    loop = train.loop_config_from({**train_params, **shape, "epochs": 1, "learning_rate": 0.0}, data)
    return loop["arrays"]


def build_pruned(teacher_path: Path, target: Path, sparsity: float, prune_params: dict[str, Any],
                 train_params: dict[str, Any], arrays: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    model, bundle = load_bundle(teacher_path)
    hparams = {"seed": train_params["seed"], "batch_size": train_params["batch_size"],
               "num_negatives": train_params["num_negatives"], "weight_decay": train_params["weight_decay"],
               "learning_rate": prune_params["learning_rate"]}
    result = prune.prune_model(model, sparsity, prune_params["scope"], arrays, hparams,
                               prune_params["finetune_steps"], prune_params["eval_every"])
    recipe = {"method": "magnitude pruning, importance |w| / max|w|", "sparsity": sparsity,
              "scope": prune_params["scope"], "finetune_steps": prune_params["finetune_steps"],
              "eval_every": prune_params["eval_every"], **hparams, **source}
    candidates.save_sparse(model, bundle["config"], bundle, target, recipe)
    return {"recipe": recipe, "sparsity": result["sparsity"], "fine_tune": result["fine_tune"]}


def build_quantized(model_path: Path, target: Path, bits: int, source: dict[str, Any]) -> dict[str, Any]:
    model, bundle = load_bundle(model_path)
    recipe = {**source, "method": "post-training quantization", "embedding_bits": bits, "linear_bits": 8,
              "tables": "folded item vectors and user ids, per row: scale * code + offset (float16)",
              "clipping": "min-max" if bits == 8 else "least squared error per row",
              "linear": "int8 weights, one scale per output channel; inputs quantized at run time"}
    candidates.save_quantized(model, bits, bundle["config"], bundle, target, recipe)
    return {"recipe": recipe}


def build_student(teacher_path: Path, target: Path, settings: dict[str, Any], train_params: dict[str, Any],
                  data: dict[str, Any], root: Path, source: dict[str, Any]) -> dict[str, Any]:
    from pipelines import train

    teacher, bundle = load_bundle(teacher_path)
    checked = distill.check_settings(settings, int(bundle["config"]["embedding_dim"]))
    cluster.init_ray(train_params)
    import ray

    try:
        summary = distill.distill(teacher, bundle, teacher_path, train_params, checked, data,
                                  root / "checkpoints", target)
    finally:
        ray.shutdown()
    recipe = {"method": "knowledge distillation", **checked, **train_params, **source}
    return {"recipe": recipe, "best_epoch": summary["best_epoch"], "history": summary["history"]}


# ---------------------------------------------------------------- measuring


def evaluation_inputs(root: Path, bundle: dict[str, Any], latency_users: int) -> dict[str, Any]:
    tables = evaluate.load_tables(root)
    state = user_state([tables["train"], tables["valid"]], bundle["item_ids"], bundle["user_ids"],
                       int(bundle["config"]["history_length"]))
    users, indptr, indices = evaluate.test_targets(tables["test"], bundle["item_ids"], bundle["user_ids"])
    timed = users[np.linspace(0, len(users) - 1, min(latency_users, len(users))).astype(int)] if len(users) else users
    return {"state": state, "users": users, "indptr": indptr, "indices": indices, "timed_users": timed,
            "all_users": np.arange(1, len(bundle["user_ids"]) + 1)}


def measure_model(path: Path, inputs: dict[str, Any], k: int, batch_size: int) -> dict[str, Any]:
    """Measure one saved model, loaded as serving loads it; returns its row and its NDCG per test user."""
    model, bundle = candidates.load_candidate(path)
    counts = candidates.parameter_counts(bundle)
    row = {"size_bytes": path.stat().st_size, "parameters": counts["parameters"]}
    if "nonzero" in counts:
        row["nonzero_parameters"] = counts["nonzero"]
    scores, per_user = measure.quality(model, inputs["users"], inputs["indptr"], inputs["indices"], inputs["state"], k)
    row.update(scores, per_user_ndcg=per_user)
    row.update(measure.latency(model, inputs["timed_users"], inputs["state"], k))
    row.update(measure.throughput(model, inputs["all_users"], inputs["state"], k, batch_size))
    row.update(measure.peak_memory(path))
    return row


def measure_all(rows: list[dict[str, Any]], inputs: dict[str, Any], k: int, batch_size: int) -> None:
    """Add measurements to every built row in place; a row whose measuring fails becomes failed.

    The first row is the teacher; every other measured row is also compared with it user by user.
    """
    for row in rows:
        if row["status"] != "ok":
            continue
        try:
            row.update(measure_model(row["path"], inputs, k, batch_size))
        except Exception as error:  # one model's failure must not lose the other measurements
            log.exception("measuring %s failed", row["name"])
            row.update(status="failed", error=f"measuring failed: {type(error).__name__}: {error}")
            continue
        log.info("%s: NDCG@%d %.4f, %d bytes, p50 %.3f ms, p99 %.3f ms", row["name"], k, row[f"test_ndcg@{k}"],
                 row["size_bytes"], row["latency_p50_ms"], row["latency_p99_ms"])
    teacher = rows[0].get("per_user_ndcg")
    for row in rows:
        per_user = row.pop("per_user_ndcg", None)
        if teacher is not None and per_user is not None:
            row.update(measure.paired_comparison(per_user, teacher, k))


# ---------------------------------------------------------------- outputs


def export_chosen(path: Path, onnx_path: Path, inputs: dict[str, Any], tolerance: float, k: int) -> dict[str, Any]:
    """Export the chosen model to ONNX and compare it with PyTorch's exact kernels on the test users."""
    from pipelines import onnx_export

    model, bundle = candidates.load_candidate(path, fast=False)
    config_ = bundle["config"]
    onnx_export.export(model, int(config_["n_items"]), int(config_["history_length"]), onnx_path)
    users = inputs["users"]
    parity = onnx_export.check_parity(model, onnx_path, users, inputs["state"]["histories"][users], k, tolerance)
    parity["size_bytes"] = onnx_path.stat().st_size
    return parity


def plot_tradeoff(rows: list[dict[str, Any]], decision: dict[str, Any], k: int, target: Path) -> None:
    """Scatter NDCG@K against size on disk and against p50 latency; mark the threshold and the choice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipelines.io import atomic_path

    metric = f"test_ndcg@{k}"
    measured = [row for row in rows if row["status"] == "ok"]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, key, label in ((axes[0], "size_bytes", "size on disk (KiB)"),
                             (axes[1], "latency_p50_ms", "p50 top-10 latency, one user, one thread (ms)")):
        for row in measured:
            x = row[key] / 1024 if key == "size_bytes" else row[key]
            chosen = row["name"] == decision["chosen"]
            axis.scatter(x, row[metric], s=70 if chosen else 35, marker="*" if chosen else "o",
                         color="tab:red" if chosen else "tab:blue")
            axis.annotate(row["name"], (x, row[metric]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        axis.axhline(decision["threshold"], color="gray", linestyle="--", linewidth=1)
        axis.set_xlabel(label)
        axis.set_ylabel(f"test NDCG@{k}")
        axis.grid(alpha=0.3)
    axes[0].set_xscale("log")
    figure.suptitle(f"compression trade-off (dashed: policy threshold; star: chosen = {decision['chosen']})")
    figure.tight_layout()
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def public_row(row: dict[str, Any], root: Path) -> dict[str, Any]:
    """Return the row for the JSON reports, with paths relative to the workspace and no training curves."""
    public = {key: value for key, value in row.items() if key not in ("history", "fine_tune", "sparsity")}
    if "path" in row:
        public["path"] = str(Path(row["path"]).relative_to(root)) if Path(row["path"]).is_absolute() else row["path"]
    return public


def write_cards(folder: Path, rows: list[dict[str, Any]]) -> None:
    for row in rows:
        if row["status"] == "ok":
            card = {key: value for key, value in row.items() if key != "path"}
            write_json(card, folder / row["name"] / "card.json")


def compress(root: Path, params: dict[str, Any], train_params: dict[str, Any]) -> dict[str, Any]:
    """Build, measure and choose; write every output of the stage. Returns the decision."""
    from pipelines import train

    teacher_path = root / params["teacher"]
    _, bundle = load_teacher(teacher_path)
    check_against_teacher(params, bundle["config"])
    k = int(params["k"])
    data = train.training_arrays(train.load_split_tables(root))
    inputs = evaluation_inputs(root, bundle, params["measure"]["latency_users"])

    final = root / COMPRESSED_DIR
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".compressed-", dir=final.parent))
    try:
        # In-process training and quantization use as many threads as one training worker.
        with measure.threads(int(train_params["cpus_per_worker"])):
            rows = build_all(work, teacher_path, params, train_params, data, root)
        teacher_row = {"name": policy.TEACHER, "status": "ok", "path": teacher_path,
                       "recipe": {"method": "none (the train stage's model)"}}
        measure_all([teacher_row, *rows], inputs, k, params["measure"]["batch_size"])
        if teacher_row["status"] != "ok":
            raise RegistryError(f"{teacher_path}: the teacher could not be measured: {teacher_row['error']}")
        rules = policy.check_policy(params["policy"])
        decision = policy.choose_candidate(teacher_row, rows, rules["max_ndcg_drop"], rules["max_latency_p99_ms"],
                                           f"test_ndcg@{k}")
        chosen = next((row for row in rows if row["name"] == decision["chosen"]), teacher_row)
        decision["onnx"] = export_chosen(Path(chosen["path"]), work / ONNX_FILE, inputs,
                                         float(params["onnx"]["tolerance"]), k)
        write_cards(work, rows)
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    for row in rows:
        if row["status"] == "ok":
            row["path"] = final / row["name"] / "model.pt"
    decision["model_path"] = public_row(chosen, root)["path"]
    decision["onnx_path"] = str(COMPRESSED_DIR / ONNX_FILE)
    all_rows = [public_row(row, root) for row in (teacher_row, *rows)]
    write_json({"compress": {row["name"]: row for row in all_rows}, "decision": decision}, root / REPORT)
    write_json(decision, root / DECISION)
    plot_tradeoff(all_rows, decision, k, root / PLOT)
    return decision


def main() -> None:
    from pipelines.cli import run_stage

    def stage() -> None:
        all_params = config.load_params()
        params = check_params(config.section(all_params, "compress"))
        train_section = config.section(all_params, "train")
        missing = [key for key in TRAIN_KEYS if key not in train_section]
        if missing:
            raise ConfigError(f"params.yaml: train.{missing[0]} is missing; the compress stage reads it")
        decision = compress(config.workspace(), params, {key: train_section[key] for key in TRAIN_KEYS})
        log.info("chose %s: %s", decision["chosen"], decision["reason"])

    run_stage("compress", stage)


if __name__ == "__main__":
    main()
