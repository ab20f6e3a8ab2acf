"""Size, latency, throughput and memory of the compressed candidates, on MovieLens-100K and on 200,000 items.

Run from the repository root with the project's virtual environment, after
`dvc repro` has run the compress stage in WORKSPACE (default: the repository):

    .venv/bin/python benchmarks/compress_latency.py [--workspace DIR] [--items 200000]
        [--output benchmarks/results/compress_latency.json]

Part 1 times the saved MovieLens-100K teacher and candidates of WORKSPACE
(models/candidate, models/compressed) again on its test users. Part 2 builds
a synthetic catalog with the same model shape (embedding dim, history length,
categories per item, users) but `--items` items and random weights. From it
the script makes the same kinds of candidate (int8, int4, 50% pruned, a
dim-16 student and its int8 form) and saves and reloads each as the stage
does. For every model it times top-10 for one user over the whole catalog
(p50, p99, one thread), batch throughput and peak memory. Every model is loaded as the compress
stage loads it (candidates.load_candidate), so the fp32 teacher, pruned
model and student score with their item vectors computed once at load.
`teacher_unfolded` is the teacher as the train stage's TwoTower scores,
recomputing every item vector on each call. Ratios are taken within this
one run, against the folded fp32 teacher.
Random weights say nothing about quality; part 2 reports how many of the
fp32 top-10 each candidate keeps instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines import candidates, evaluate, measure, prune  # noqa: E402
from pipelines.model import TwoTower, build_model, load_bundle, save_bundle  # noqa: E402
from pipelines.scoring import model_top_k, user_state  # noqa: E402

TIMED_USERS = 200
BATCH_SIZE = 256
UNFOLDED_USERS = 20


def machine() -> str:
    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return (f"{os.cpu_count()} cores, {cpu}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def interleaved_speed(models: dict, users: np.ndarray, all_users: np.ndarray, state: dict) -> dict:
    """p50/p99 one-user top-10 latency and batch throughput of every model, on one thread.

    The models take turns for each user and each batch, so a change in the
    load of this shared machine falls on all of them alike and their ratios
    stay comparable.
    """
    timings = {name: [] for name in models}
    batch_seconds = {name: 0.0 for name in models}
    with measure.threads(1):
        for model in models.values():  # warm-up: kernels pack their weights on first use
            model_top_k(model, users[:2], state, 10)
        for index in range(len(users)):
            for name, model in models.items():
                started = time.perf_counter()
                model_top_k(model, users[index:index + 1], state, 10)
                timings[name].append(1000 * (time.perf_counter() - started))
        for start in range(0, len(all_users), BATCH_SIZE):
            for name, model in models.items():
                started = time.perf_counter()
                model_top_k(model, all_users[start:start + BATCH_SIZE], state, 10, BATCH_SIZE)
                batch_seconds[name] += time.perf_counter() - started
    return {name: {"latency_p50_ms": float(np.percentile(timings[name], 50)),
                   "latency_p99_ms": float(np.percentile(timings[name], 99)),
                   "throughput_users_per_s": len(all_users) / batch_seconds[name]} for name in models}


def timings(paths: dict[str, Path], users: np.ndarray, all_users: np.ndarray, state: dict, part: str) -> dict:
    """Measure every saved model as the stage loads it, and the teacher as train saved it, unfolded."""
    models, rows = {}, {}
    for name, path in paths.items():
        models[name], bundle = candidates.load_candidate(path)
        rows[name] = {"size_bytes": path.stat().st_size,
                      "parameters": candidates.parameter_counts(bundle)["parameters"], **measure.peak_memory(path)}
    for name, speed in interleaved_speed(models, users, all_users, state).items():
        rows[name].update(speed)
    # The unfolded teacher is slow on a large catalog, so it is timed alone on fewer users.
    models["teacher_unfolded"], _ = load_bundle(paths["teacher"])
    rows["teacher_unfolded"] = {**measure.latency(models["teacher_unfolded"], users[:UNFOLDED_USERS], state, 10),
                                **measure.throughput(models["teacher_unfolded"], all_users[:BATCH_SIZE], state, 10,
                                                     BATCH_SIZE)}
    with measure.threads(1):
        tops = {name: model_top_k(model, users, state, 10)[0] for name, model in models.items()}
    for name, top in tops.items():
        kept = [len(set(mine) & set(reference)) / 10 for mine, reference in zip(top, tops["teacher"])]
        rows[name]["top10_kept_vs_fp32"] = float(np.mean(kept))
        print(f"{part} {name}: {rows[name]}", flush=True)
    return rows


def movielens(workspace: Path) -> dict:
    """Re-time the teacher and every saved candidate of the workspace on its test users."""
    teacher_path = workspace / "models" / "candidate" / "model.pt"
    _, bundle = load_bundle(teacher_path)
    tables = evaluate.load_tables(workspace)
    state = user_state([tables["train"], tables["valid"]], bundle["item_ids"], bundle["user_ids"],
                       int(bundle["config"]["history_length"]))
    test_users, _, _ = evaluate.test_targets(tables["test"], bundle["item_ids"], bundle["user_ids"])
    users = test_users[np.linspace(0, len(test_users) - 1, TIMED_USERS).astype(int)]
    all_users = np.arange(1, len(bundle["user_ids"]) + 1)
    paths = {"teacher": teacher_path}
    paths.update({folder.name: folder / "model.pt" for folder in sorted((workspace / "models" / "compressed").iterdir())
                  if (folder / "model.pt").is_file()})
    return {"items": len(bundle["item_ids"]), "models": timings(paths, users, all_users, state, "movielens")}


def synthetic_catalog(n_items: int, n_users: int, dim: int, history_length: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    categories = torch.randint(1, 20, (n_items + 1, 6), generator=generator)
    categories[:, 3:] *= torch.rand(n_items + 1, 3, generator=generator) < 0.3  # most items have 3 categories
    categories[0] = 0
    years = torch.randint(1, 17, (n_items + 1,), generator=generator)
    years[0] = 0
    torch.manual_seed(seed)
    teacher = TwoTower(n_items, n_users, categories, years, dim, history_length, 0.2).eval()
    histories = np.asarray(torch.randint(1, n_items + 1, (n_users + 1, history_length), generator=generator))
    histories[0] = 0
    # Each user has seen exactly the items of their history (user 0 is padding and has seen nothing).
    state = {"histories": histories, "seen_indptr": np.r_[0, np.arange(n_users + 1) * history_length],
             "seen_indices": histories[1:].reshape(-1)}
    return teacher, state


def synthetic(n_items: int, n_users: int, folder: Path) -> dict:
    """Build and time teacher-shaped candidates on a random `n_items` catalog."""
    teacher, state = synthetic_catalog(n_items, n_users, 64, 50)
    config = {"n_items": n_items, "n_users": n_users, "embedding_dim": 64, "history_length": 50, "dropout": 0.2}
    bundle = {"item_ids": [str(i) for i in range(1, n_items + 1)], "user_ids": [str(u) for u in range(1, n_users + 1)]}
    paths = {"teacher": folder / "teacher.pt"}
    save_bundle(teacher, config, bundle["item_ids"], bundle["user_ids"], paths["teacher"])
    started = time.time()
    for bits in (8, 4):
        paths[f"int{bits}"] = folder / f"int{bits}.pt"
        candidates.save_quantized(teacher, bits, config, bundle, paths[f"int{bits}"], {"bits": bits})
    pruned, _ = load_bundle(paths["teacher"])
    masks = prune.magnitude_masks({name: weight.detach() for name, weight in prune.prunable_weights(pruned).items()},
                                  0.5, "per_tensor")
    prune.apply_masks(pruned, masks)
    paths["prune_50"] = folder / "prune_50.pt"
    candidates.save_sparse(pruned, config, bundle, paths["prune_50"], {"sparsity": 0.5})
    student_config = {**config, "embedding_dim": 16}
    student = build_model(student_config, teacher.item_categories, teacher.item_year_buckets).eval()
    paths["student"] = folder / "student.pt"
    save_bundle(student, student_config, bundle["item_ids"], bundle["user_ids"], paths["student"])
    paths["student_int8"] = folder / "student_int8.pt"
    candidates.save_quantized(student, 8, student_config, bundle, paths["student_int8"], {"bits": 8})
    print(f"synthetic: built candidates in {time.time() - started:.1f} s", flush=True)

    users = np.linspace(1, n_users, TIMED_USERS).astype(np.int64)
    all_users = np.arange(1, n_users + 1)
    rows = timings(paths, users, all_users, state, "synthetic")
    for name in ("student", "student_int8"):
        # An untrained student ranks nothing like the random teacher, so the overlap means nothing here.
        rows[name].pop("top10_kept_vs_fp32", None)
    return {"items": n_items, "users": n_users, "models": rows}


def ratios(models: dict) -> dict:
    """Size and speed of each model relative to the folded fp32 teacher."""
    teacher = models["teacher"]
    result = {}
    for name, row in models.items():
        if name == "teacher":
            continue
        result[name] = {"p50_speedup": teacher["latency_p50_ms"] / row["latency_p50_ms"],
                        "p99_speedup": teacher["latency_p99_ms"] / row["latency_p99_ms"],
                        "throughput_speedup": row["throughput_users_per_s"] / teacher["throughput_users_per_s"]}
        if "size_bytes" in row:
            result[name]["smaller"] = teacher["size_bytes"] / row["size_bytes"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=REPO)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=943, help="users of the synthetic catalog (MovieLens: 943)")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "compress_latency.json")
    args = parser.parse_args()

    results = {"machine": machine(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "command": " ".join(sys.argv)}
    results["movielens"] = movielens(args.workspace.resolve())
    results["movielens"]["ratios"] = ratios(results["movielens"]["models"])
    with tempfile.TemporaryDirectory(prefix="shoprec-compress-bench-") as scratch:
        results["synthetic"] = synthetic(args.items, args.users, Path(scratch))
    results["synthetic"]["ratios"] = ratios(results["synthetic"]["models"])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    for part in ("movielens", "synthetic"):
        for name, ratio in results[part]["ratios"].items():
            print(f"{part:9s} {name:13s} " + ", ".join(f"{key} {value:.2f}x" for key, value in ratio.items()))


if __name__ == "__main__":
    main()
