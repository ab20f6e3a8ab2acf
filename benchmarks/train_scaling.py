"""Measure what Ray Train and Lightning cost and gain for the train stage.

Run from the repository root with the project's virtual environment:

    .venv/bin/python benchmarks/train_scaling.py [--parts overhead,scaling,cluster,large]

Parts (all by default):
- overhead: steady-state training examples per second of the Ray Train +
  Lightning path with 1 worker against a plain PyTorch loop in one process,
  same model, data, batch size, epochs and one thread each; plus the stage's
  start-up split (data loading, Ray start, worker start).
- scaling: the same throughput with 1 and 2 local workers.
- cluster: 2 workers on the two-node cluster of infra/ray/local-cluster.sh.
- large: one epoch on a synthetic 10-million-interaction data set with 1 and
  2 workers: epoch time and peak resident memory of each worker.
"Steady state" leaves out the first epoch. Results go to
benchmarks/results/train_scaling.json; a run replaces only the parts it
measured, so parts run one at a time add up in one file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipelines import cluster, config, features, train  # noqa: E402

MOVIELENS_PARAMS = {
    "seed": 42, "epochs": 4, "patience": 0, "batch_size": 256, "learning_rate": 0.002, "weight_decay": 0.0,
    "embedding_dim": 64, "history_length": 50, "num_negatives": 512, "dropout": 0.2, "num_workers": 1,
    "cpus_per_worker": 1, "use_gpu": False, "backend": "auto", "ray_address": "", "max_failures": 0,
    "resume": False, "check_parameter_sync": False,
}


def movielens_data() -> dict:
    from pipelines import ingest, split

    tables = ingest.ingest_movielens(ingest.movielens_folder())
    splits = split.leave_one_out(tables["interactions"])
    return train.training_arrays({"items": tables["items"], "users": tables["users"], **splits})


def synthetic_data(n_interactions: int, n_users: int, n_items: int, seed: int = 0) -> dict:
    """Interactions with Zipf-like item popularity, sorted by user as the split stage writes them."""
    rng = np.random.default_rng(seed)
    users = np.sort(rng.integers(1, n_users + 1, n_interactions))
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    items = rng.choice(np.arange(1, n_items + 1), size=n_interactions, p=popularity / popularity.sum())
    last = np.r_[users[1:] != users[:-1], True]
    catalog = features.Catalog([str(i) for i in range(1, n_items + 1)], [str(u) for u in range(1, n_users + 1)],
                               [], np.zeros((n_items + 1, 1), dtype=np.int64), np.zeros(n_items + 1, dtype=np.int64))
    return {"catalog": catalog, "train_users": users[~last], "train_items": items[~last],
            "valid_users": users[last], "valid_items": items[last]}


def steady_throughput(history: list[dict], examples: int) -> float:
    steady = [epoch for epoch in history if epoch["epoch"] >= 1]
    seconds = sum(epoch["epoch_ended_at"] - epoch["epoch_started_at"] for epoch in steady)
    return examples * len(steady) / seconds


def ray_run(params: dict, data: dict, address: str | None = None) -> dict:
    """Train through the stage's own functions and return its timing and history."""
    import ray

    params = {**params, "ray_address": address or ""}
    storage = tempfile.mkdtemp(prefix="shoprec-bench-")
    started = time.time()
    cluster.init_ray(params)
    ray_ready = time.time()
    try:
        result = train.fit(params, data, storage)
    finally:
        fit_ended = time.time()
        ray.shutdown()
    with result.checkpoint.as_directory() as folder:
        run_info = json.loads((Path(folder) / train.HISTORY_FILE).read_text())
    timing = train.timing_breakdown({"started": started, "data_ready": started, "ray_ready": ray_ready,
                                     "fit_ended": fit_ended}, run_info["history"])
    return {"timing": timing, **run_info}


def plain_loop(params: dict, data: dict) -> list[dict]:
    """The same model, loss and validation in one process, without Ray or Lightning."""
    torch.set_num_threads(int(params["cpus_per_worker"]))
    torch.manual_seed(params["seed"])
    loop_config = train.loop_config_from(params, data)
    arrays = loop_config["arrays"]
    module = train.build_module(loop_config["model_config"], arrays, loop_config["hparams"])
    module.log = lambda *args, **kwargs: None  # Lightning's logger is not attached outside a Trainer
    optimizer = module.configure_optimizers()
    train_data, valid_data = train.worker_datasets(arrays, int(params["history_length"]))
    history = []
    for epoch in range(int(params["epochs"])):
        started = time.time()
        loader = torch.utils.data.DataLoader(train_data, batch_size=int(params["batch_size"]), shuffle=True,
                                             collate_fn=train.collate_batch)
        module.train()
        for batch in loader:
            loss = module.training_step(batch, 0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        module.eval()
        with torch.no_grad():
            for batch in torch.utils.data.DataLoader(valid_data, batch_size=1024):
                module.validation_step(batch, 0)
        module._valid_ndcg.clear()
        history.append({"epoch": epoch, "epoch_started_at": started, "epoch_ended_at": time.time()})
    return history


def start_cluster(port: int) -> dict:
    env = {**os.environ, "RAY_HEAD_PORT": str(port), "PYTHON": sys.executable}
    subprocess.run(["bash", str(REPO / "infra/ray/local-cluster.sh"), "start"], env=env, check=True, timeout=120)
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="overhead,scaling,cluster,large")
    parser.add_argument("--large-interactions", type=int, default=10_000_000)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    results: dict = {}
    data = movielens_data()
    examples = len(data["train_users"])

    if "overhead" in parts:
        plain = plain_loop(MOVIELENS_PARAMS, data)
        one = ray_run(MOVIELENS_PARAMS, data)
        results["overhead"] = {
            "plain_examples_per_second": steady_throughput(plain, examples),
            "ray_1_worker_examples_per_second": steady_throughput(one["history"], examples),
            "startup": {key: one["timing"][key] for key in ("ray_start_seconds", "worker_start_seconds")},
        }
        results["overhead"]["ratio"] = (results["overhead"]["ray_1_worker_examples_per_second"]
                                        / results["overhead"]["plain_examples_per_second"])
    if "scaling" in parts:
        results["scaling"] = {}
        for workers in (1, 2):
            run = ray_run({**MOVIELENS_PARAMS, "num_workers": workers}, data)
            results["scaling"][f"{workers}_workers_examples_per_second"] = steady_throughput(run["history"], examples)
    if "cluster" in parts:
        port = 6500 + os.getpid() % 400
        env = start_cluster(port)
        try:
            run = ray_run({**MOVIELENS_PARAMS, "num_workers": 2}, data, address=f"127.0.0.1:{port}")
        finally:
            subprocess.run(["bash", str(REPO / "infra/ray/local-cluster.sh"), "stop"], env=env, timeout=60)
        results["cluster"] = {"2_workers_two_nodes_examples_per_second": steady_throughput(run["history"], examples),
                              "distinct_nodes": len(set(run["worker_nodes"]))}
    if "large" in parts:
        large = synthetic_data(args.large_interactions, n_users=100_000, n_items=20_000)
        large_params = {**MOVIELENS_PARAMS, "epochs": 1, "batch_size": 2048}
        results["large"] = {"interactions": args.large_interactions}
        for workers in (1, 2):
            run = ray_run({**large_params, "num_workers": workers}, large)
            epoch = run["history"][0]
            results["large"][f"{workers}_workers"] = {
                "epoch_seconds": epoch["epoch_ended_at"] - epoch["epoch_started_at"],
                "peak_rss_mb_per_worker": run["worker_peak_rss_mb"],
            }

    measured = {"machine": f"{os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d")}
    for part in results.values():
        part.update(measured)
    output = REPO / "benchmarks" / "results" / "train_scaling.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    earlier = json.loads(output.read_text()) if output.exists() else {}
    output.write_text(json.dumps({**earlier, **results}, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
