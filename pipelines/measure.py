"""Measure a scoring model: ranking quality, top-K latency, batch throughput and peak memory.

Latency is the wall time to rank the whole catalog for one user (user tower,
scores, seen-item mask, top-K) on one thread; throughput ranks every user in
batches, also on one thread, so figures compare models rather than machines.

Run as `python -m pipelines.measure MODEL_FILE` to print, as JSON, the peak
and the final resident memory that loading MODEL_FILE and ranking for one
user add to a fresh Python process that has already imported torch. This
probe reads /proc, so it runs on Linux only.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from pipelines import metrics
from pipelines.errors import DataError, ShoprecError
from pipelines.scoring import model_top_k

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    """Run the block with `count` torch threads, then restore the previous number."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def quality(model, users: np.ndarray, indptr: np.ndarray, indices: np.ndarray, state: dict[str, np.ndarray],
            k: int) -> tuple[dict[str, float], np.ndarray]:
    """Test NDCG@k and Recall@k over `users` with the standard error of the mean NDCG; and NDCG per user."""
    top, _ = model_top_k(model, users, state, k)
    per_user = metrics.per_user_metrics(top, indptr, indices)
    ndcg = per_user["ndcg"]
    return {
        f"test_ndcg@{k}": float(ndcg.mean()),
        f"test_recall@{k}": float(per_user["recall"].mean()),
        f"test_ndcg@{k}_stderr": standard_error(ndcg),
    }, ndcg


def standard_error(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def paired_comparison(candidate: np.ndarray, teacher: np.ndarray, k: int) -> dict[str, float]:
    """Candidate against teacher on the same users: NDCG ratio, mean per-user difference and its standard error.

    The pairing removes the spread between users, which dominates the
    standard error of each model's own mean.
    """
    difference = candidate - teacher
    teacher_mean = float(teacher.mean()) if len(teacher) else 0.0
    return {f"test_ndcg@{k}_ratio_to_teacher": float(candidate.mean()) / teacher_mean if teacher_mean else 0.0,
            f"test_ndcg@{k}_paired_difference": float(difference.mean()) if len(difference) else 0.0,
            f"test_ndcg@{k}_paired_difference_stderr": standard_error(difference)}


def latency(model, users: np.ndarray, state: dict[str, np.ndarray], k: int, warmup: int = 5) -> dict[str, float]:
    """p50 and p99 milliseconds to rank the catalog for one user, over `users`, on one thread."""
    if len(users) == 0:
        raise DataError("latency: no users to measure")
    timings = []
    with threads(1):
        for index in range(warmup + len(users)):
            user = users[index % len(users): index % len(users) + 1]
            started = time.perf_counter()
            model_top_k(model, user, state, k)
            if index >= warmup:
                timings.append(time.perf_counter() - started)
    milliseconds = 1000 * np.array(timings)
    return {"latency_p50_ms": float(np.percentile(milliseconds, 50)),
            "latency_p99_ms": float(np.percentile(milliseconds, 99))}


def throughput(model, users: np.ndarray, state: dict[str, np.ndarray], k: int, batch_size: int) -> dict[str, float]:
    """Users ranked per second when all `users` are scored in batches, on one thread."""
    with threads(1):
        model_top_k(model, users[:batch_size], state, k, batch_size)  # warm-up: kernels pack on first use
        started = time.perf_counter()
        model_top_k(model, users, state, k, batch_size)
        elapsed = time.perf_counter() - started
    return {"throughput_users_per_s": len(users) / elapsed if elapsed > 0 else float("inf")}


def peak_memory(path: Path, timeout: float = 300) -> dict[str, int]:
    """Peak resident bytes that loading `path` and ranking for one user add, from a fresh process."""
    python_path = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
    # A fixed mmap threshold makes glibc return every freed block over 64 KiB to the system at
    # once, so the probe's first pass leaves no freed tensor memory for the measured pass to reuse.
    env = {**os.environ, "PYTHONPATH": python_path, "MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run([sys.executable, "-m", "pipelines.measure", str(path)], capture_output=True,
                            text=True, env=env, timeout=timeout, check=False)
    if result.returncode != 0:
        raise DataError(f"{path}: memory probe failed: {result.stderr.strip()[:2000]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def memory_status() -> dict[str, int]:
    """Current (VmRSS) and peak (VmHWM) resident bytes of this process, from /proc/self/status."""
    text = Path("/proc/self/status").read_text(encoding="utf-8")
    return {key: 1024 * int(re.search(rf"{key}:\s+(\d+) kB", text).group(1)) for key in ("VmRSS", "VmHWM")}


def probe_memory(path: Path) -> dict[str, int]:
    """Body of the memory probe: resident bytes added by loading `path` and ranking for one user.

    Writing 5 to /proc/self/clear_refs resets the peak (Linux 4.0 and later), so
    the peak counts only what loading and scoring add to the warmed-up process.
    """
    from pipelines.candidates import load_candidate

    def load_and_rank():
        model, _ = load_candidate(path)
        history = torch.zeros((1, model.history_length), dtype=torch.long)
        with torch.no_grad():
            torch.topk(model(torch.ones(1, dtype=torch.long), history), 10)
        return model

    # A first pass pages in the code and libraries that loading and scoring use, then is freed.
    load_and_rank()
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5", encoding="utf-8")
    before = memory_status()
    model = load_and_rank()  # kept referenced, so its tensors are still resident when measured
    after = memory_status()
    del model
    return {"peak_memory_bytes": after["VmHWM"] - before["VmRSS"],
            "resident_memory_bytes": after["VmRSS"] - before["VmRSS"]}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m pipelines.measure MODEL_FILE")
    try:
        print(json.dumps(probe_memory(Path(sys.argv[1]))))
    except ShoprecError as error:
        sys.exit(f"error: {error}")
