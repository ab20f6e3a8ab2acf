"""Time the validate stage on synthetic interaction tables of 1M and 10M rows.

Run from the repository root with the project's virtual environment:

    .venv/bin/python benchmarks/validate_scale.py [--sizes 1000000 10000000]
        [--output benchmarks/results/validate_scale.json]

For each size, in a scratch workspace:

1. generate a seeded synthetic shop (users = rows / 20, items = rows / 100,
   90 days of events, ratings 1 to 5) and write it as the ingested tables;
2. run `python -m pipelines.validate` in a child process with no last good
   snapshot (the first run). Then run it again on a second draw of the same
   shop, so that the snapshot checks run too. Each run's wall time and peak
   resident memory (the child's ru_maxrss) are recorded;
3. in this process, time each check kind on its own: the Great Expectations
   suite restricted to that kind's expectations, plus the work shoprec does
   outside GE (reading, counting, the snapshot comparison, Data Docs).

It also times the image checks on `--images` product photos of 28 x 28
grey pixels, the size of the Fashion-MNIST pictures a shop catalog may use.

The goal is a validate run under 2 minutes with peak memory under 6 GiB at
10M rows on 2 cores.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.pipeline_run import machine  # noqa: E402
from pipelines import config, validate  # noqa: E402
from pipelines.io import write_parquet_tables  # noqa: E402
from pipelines.quality import drift, engine  # noqa: E402
from pipelines.quality.checks import kind_of  # noqa: E402
from pipelines.quality.settings import rules_from_params  # noqa: E402
from pipelines.quality.snapshots import QUALITY_DIR, SnapshotStore  # noqa: E402
from tests.conftest import update_params  # noqa: E402

RUN_DATE = "2026-03-08"
DAYS = 90


def synthetic_shop(rows: int, seed: int) -> dict[str, pd.DataFrame]:
    """Draw `rows` events of one fixed shop; `seed` changes only which events are drawn.

    Activity and popularity follow power laws over ranks (exponents 0.8 and
    0.9), so there are busy users and best sellers, and every id of an event
    is in its table.
    """
    users, items = max(rows // 20, 10), max(rows // 100, 10)
    shop = np.random.default_rng(0)
    user_order, item_order = shop.permutation(users), shop.permutation(items)
    draw = np.random.default_rng(seed)
    end = int(pd.Timestamp(RUN_DATE, tz="UTC").timestamp())
    interactions = pd.DataFrame({
        "user_id": _ids("u", user_order[_power_law_ranks(draw, users, 0.8, rows)]),
        "item_id": _ids("i", item_order[_power_law_ranks(draw, items, 0.9, rows)]),
        "timestamp": end - draw.integers(1, DAYS * 86_400, rows),
        "rating": draw.choice([1.0, 2.0, 3.0, 4.0, 5.0], size=rows, p=[0.06, 0.11, 0.27, 0.34, 0.22]),
    })
    # A repeat of (user, item, second) is rare but possible; drop it so that the data is clean.
    interactions = interactions.drop_duplicates(["user_id", "item_id", "timestamp"], ignore_index=True)
    catalog = pd.DataFrame({
        "item_id": _ids("i", np.arange(items)),
        "title": pd.array([f"Product {n}" for n in range(items)], dtype="string"),
        "categories": pd.array(shop.choice(["Shirts", "Shoes", "Bags|Shoes", "Hats"], size=items), dtype="string"),
        "release_year": pd.array(shop.integers(2010, 2026, size=items), dtype="Int64"),
        "image_path": pd.array([pd.NA] * items, dtype="string"),
    })
    return {"interactions": interactions, "items": catalog, "users": pd.DataFrame({"user_id": _ids("u", np.arange(users))})}


def _power_law_ranks(rng: np.random.Generator, count: int, exponent: float, size: int) -> np.ndarray:
    weights = 1 / np.arange(1, count + 1) ** exponent
    return rng.choice(count, size=size, p=weights / weights.sum())


def _ids(prefix: str, numbers: np.ndarray) -> pd.Series:
    return pd.Series(np.char.add(prefix, numbers.astype(str)), dtype="string")


def run_stage(root: Path) -> dict:
    """Run the validate stage in a child process and return its wall time and peak memory; stop if it fails."""
    env = {**os.environ, "SHOPREC_WORKSPACE": str(root), "SHOPREC_RUN_ID": f"bench-{time.time_ns()}"}
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "pipelines.validate"], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = child.stdout.read().decode()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"validate failed:\n{output[-3000:]}")
    return {"seconds": round(seconds, 1), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 2)}


def time_kinds(root: Path) -> dict:
    """Time each part of a run with a last good snapshot, in this process."""
    timings = {}
    params = config.section(config.load_params(root / config.PARAMS_FILE), "validate")
    rules = rules_from_params(params)

    started = time.perf_counter()
    import great_expectations  # noqa: F401
    timings["import Great Expectations"] = time.perf_counter() - started

    started = time.perf_counter()
    tables = validate.load_tables(root / config.INGESTED_DIR)
    timings["read tables"] = time.perf_counter() - started

    started = time.perf_counter()
    counts = drift.count_interactions(tables["interactions"])
    last_good = SnapshotStore(root / QUALITY_DIR).load_last_good()
    timings["count events per user and item, load snapshot"] = time.perf_counter() - started

    started = time.perf_counter()
    validate.suites.interactions_suite(tables, rules)
    timings["interactions suite: referential flags (isin)"] = time.perf_counter() - started

    started = time.perf_counter()
    drift.compare(last_good[1], counts, rules.drift.metric)
    timings["snapshot comparison (new ids, drift)"] = time.perf_counter() - started

    started = time.perf_counter()
    suites, _ = validate.build_suites(tables, rules, root, last_good, counts)
    timings["build all suites (includes the two rows above)"] = time.perf_counter() - started

    # GE binds an expectation to one suite, so each timed run gets freshly built suites.
    def fresh_suites():
        return validate.build_suites(tables, rules, root, last_good, counts)[0]

    kinds = sorted({kind_of(expectation.meta["check"]) for suite in suites for expectation in suite.expectations})
    for kind in kinds:
        subset = [_only_kind(suite, kind) for suite in fresh_suites()]
        subset = [suite for suite in subset if suite.expectations]
        started = time.perf_counter()
        engine.run_suites(subset, rules.severity, "bench", rules.run_time)
        timings[f"GE: {kind}"] = time.perf_counter() - started

    everything = fresh_suites()
    docs = Path(tempfile.mkdtemp(prefix="docs", dir=root))
    started = time.perf_counter()
    engine.run_suites(everything, rules.severity, "bench", rules.run_time, docs / "site")
    timings["GE: all suites together, with Data Docs"] = time.perf_counter() - started

    started = time.perf_counter()
    drift.build_profile(counts, rules.rating_min, rules.rating_max)
    timings["profile for the next snapshot"] = time.perf_counter() - started
    return {name: round(seconds, 2) for name, seconds in timings.items()}


def _only_kind(suite, kind: str):
    return validate.suites.Suite(suite.name, suite.frame,
                                 [expectation for expectation in suite.expectations
                                  if kind_of(expectation.meta["check"]) == kind],
                                 suite.index_columns, suite.evidence)


def time_images(count: int, scratch: Path) -> dict:
    """Write `count` small PNG files, then time reading them and judging them with GE."""
    from PIL import Image

    root = scratch / "images"
    folder = root / "data" / "images"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for number in range(count):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), mode="L").save(folder / f"{number}.png")
        paths.append(f"data/images/{number}.png")
    items = pd.DataFrame({"item_id": [str(number) for number in range(count)],
                          "image_path": pd.array(paths, dtype="string")})
    rules = rules_from_params(config.section(config.load_params(REPO / config.PARAMS_FILE), "validate"))

    started = time.perf_counter()
    facts = validate.inspect_images(items, root, rules.images.folder)
    opened = time.perf_counter() - started
    started = time.perf_counter()
    results = engine.run_suites([validate.suites.images_suite(facts, rules)], rules.severity, "bench", rules.run_time)
    judged = time.perf_counter() - started
    return {"images": count, "open_and_decode_seconds": round(opened, 2), "ge_suite_seconds": round(judged, 2),
            "failures": sum(not result.success for result in results)}


def measure(rows: int, scratch: Path) -> dict:
    root = scratch / f"rows{rows}"
    root.mkdir()
    shutil.copyfile(REPO / config.PARAMS_FILE, root / config.PARAMS_FILE)
    update_params(root, {"validate.run_date": RUN_DATE})

    first_shop = synthetic_shop(rows, seed=1)
    written = len(first_shop["interactions"])
    write_parquet_tables(first_shop, root / config.INGESTED_DIR)
    del first_shop
    gc.collect()
    first = run_stage(root)

    write_parquet_tables(synthetic_shop(rows, seed=2), root / config.INGESTED_DIR)
    gc.collect()
    second = run_stage(root)
    report = json.loads((root / config.VALIDATION_REPORT).read_text())
    return {
        "interactions": written,
        "first_run_no_snapshot": first,
        "second_run_with_snapshot": second,
        "second_run_failures": [result["check"] for result in report["failed"]],
        "parts_seconds": time_kinds(root),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--images", type=int, default=2000, help="number of product images to time (0: none)")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "validate_scale.json")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="shoprec-validate-bench-"))
    try:
        results = {str(rows): measure(rows, scratch) for rows in args.sizes}
        images = time_images(args.images, scratch) if args.images else None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = {"machine": machine(), "cpus_available": len(os.sched_getaffinity(0)), "sizes": results,
              "images": images}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
