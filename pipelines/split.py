"""Split stage: divide interactions into train, validation and test sets.

Run as `python -m pipelines.split` (the DVC stage `split`). Two protocols, set
by `split.protocol` and explained in docs/evaluation.md:

- `leave_one_out` (default): per user, the last interaction is test and the
  one before it is validation; users with fewer than `min_interactions`
  interactions stay in train only.
- `global_time`: one pair of cutoffs for all users, so nothing after a cutoff
  can leak into training.

Before either protocol, `split.coldstart_items` can hold out a share of the
products: every interaction with them goes to `coldstart.parquet` instead, so
no model trains on them, and the coldstart stage measures how well they are
recommended from their content alone.

Ties in timestamp are broken by the row's position in the ingested table (the
order of the source log), with a stable sort, so the split is deterministic.
The tie rule moves MovieLens-100K figures a lot, because many users rated
several movies in the same second: docs/evaluation.md gives the numbers.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines import config
from pipelines.errors import ConfigError, DataError
from pipelines.io import read_json, write_parquet_tables

log = logging.getLogger(__name__)

PROTOCOLS = ("leave_one_out", "global_time")


def chronological(interactions: pd.DataFrame) -> pd.DataFrame:
    """Sort by user, time and original row, the order every protocol uses."""
    ordered = interactions.assign(_row=np.arange(len(interactions)))
    ordered = ordered.sort_values(["user_id", "timestamp", "_row"], kind="mergesort")
    return ordered.drop(columns="_row").reset_index(drop=True)


def leave_one_out(interactions: pd.DataFrame, min_interactions: int = 3) -> dict[str, pd.DataFrame]:
    """Hold out each user's last interaction for test and the one before for validation."""
    if min_interactions < 3:
        raise ConfigError(f"params.yaml: split.min_interactions is {min_interactions}, expected at least 3")
    ordered = chronological(interactions)
    position_from_end = ordered.groupby("user_id", sort=False).cumcount(ascending=False)
    counts = ordered.groupby("user_id", sort=False)["item_id"].transform("size")
    eligible = counts >= min_interactions
    test = eligible & (position_from_end == 0)
    valid = eligible & (position_from_end == 1)
    return {
        "train": ordered[~(test | valid)].reset_index(drop=True),
        "valid": ordered[valid].reset_index(drop=True),
        "test": ordered[test].reset_index(drop=True),
    }


def resolve_cutoff(value: Any, timestamps: pd.Series, name: str) -> int:
    """Turn a quantile in (0, 1) or an ISO date into a Unix time in seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not 0 < value < 1:
            raise ConfigError(f"params.yaml: split.{name} is {value}; a quantile must lie strictly between 0 and 1")
        return int(np.quantile(timestamps.to_numpy(), value))
    try:
        return int(pd.Timestamp(str(value), tz="UTC").timestamp())
    except ValueError as error:
        raise ConfigError(
            f"params.yaml: split.{name} is {value!r}, expected a quantile such as 0.9 or a date such as 1998-03-01"
        ) from error


def global_time(interactions: pd.DataFrame, valid_cutoff: Any, test_cutoff: Any) -> dict[str, pd.DataFrame]:
    """Split everybody at the same two points in time: train < valid_cutoff <= valid < test_cutoff <= test."""
    ordered = chronological(interactions)
    valid_at = resolve_cutoff(valid_cutoff, ordered["timestamp"], "valid_cutoff")
    test_at = resolve_cutoff(test_cutoff, ordered["timestamp"], "test_cutoff")
    if valid_at > test_at:
        raise ConfigError(
            f"params.yaml: split.valid_cutoff ({valid_cutoff}) falls after split.test_cutoff ({test_cutoff})"
        )
    timestamps = ordered["timestamp"]
    splits = {
        "train": ordered[timestamps < valid_at],
        "valid": ordered[(timestamps >= valid_at) & (timestamps < test_at)],
        "test": ordered[timestamps >= test_at],
    }
    return {name: frame.reset_index(drop=True) for name, frame in splits.items()}


def hold_out_items(interactions: pd.DataFrame, share: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Pick `share` of the products that have interactions, seeded; return (kept, held-out) interactions."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 1:
        raise ConfigError(f"params.yaml: split.coldstart_items is {share!r}, expected a share from 0 up to (not including) 1")
    if share == 0:
        return interactions, interactions.iloc[:0]
    products = np.sort(interactions["item_id"].astype(str).unique())
    count = max(1, int(round(share * len(products))))
    held = set(np.random.default_rng(seed).choice(products, count, replace=False))
    cold = interactions["item_id"].astype(str).isin(held).to_numpy()
    return interactions[~cold], chronological(interactions[cold])


def split(interactions: pd.DataFrame, params: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """Apply the protocol that `split.protocol` names."""
    protocol = params.get("protocol", "leave_one_out")
    if protocol == "leave_one_out":
        splits = leave_one_out(interactions, int(params.get("min_interactions", 3)))
    elif protocol == "global_time":
        splits = global_time(interactions, params.get("valid_cutoff", 0.8), params.get("test_cutoff", 0.9))
    else:
        raise ConfigError(f"params.yaml: split.protocol is '{protocol}', expected one of: {', '.join(PROTOCOLS)}")
    for name, frame in splits.items():
        if frame.empty:
            raise DataError(f"split '{name}' is empty under protocol {protocol}; check the split params and the data")
    return splits


def require_validated(root: Path) -> None:
    """Stop when the validate stage rejected the ingested data.

    DVC already skips split after a failed validate; this also stops a split
    started by hand. A workspace without a validation report is let through.
    """
    report_path = root / config.VALIDATION_REPORT
    if not report_path.is_file():
        return
    report = read_json(report_path)
    if report.get("passed") is False:
        failed = ", ".join(report.get("block_failures") or []) or "see the report"
        raise DataError(f"{report_path}: the ingested data failed validation ({failed}); "
                        "fix the input and run ingest and validate again")


def split_with_coldstart(interactions: pd.DataFrame, params: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """Hold out the cold-start products, then split the rest; returns train, valid, test and coldstart."""
    seed = params.get("coldstart_seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"params.yaml: split.coldstart_seed is {seed!r}, expected an integer")
    kept, held_out = hold_out_items(interactions, params.get("coldstart_items", 0.0), seed)
    splits = split(kept.reset_index(drop=True), params)
    splits["coldstart"] = held_out.reset_index(drop=True)
    return splits


def main() -> None:
    from pipelines.cli import run_stage

    def stage() -> None:
        params = config.section(config.load_params(), "split")
        root = config.workspace()
        require_validated(root)
        source = root / config.INGESTED_DIR / "interactions.parquet"
        if not source.is_file():
            raise DataError(f"{source}: file not found; run the ingest stage first")
        splits = split_with_coldstart(pd.read_parquet(source), params)
        write_parquet_tables(splits, root / config.SPLIT_DIR)
        log.info("split (%s): %s", params.get("protocol", "leave_one_out"),
                 ", ".join(f"{name} {len(frame)} rows" for name, frame in splits.items()))

    run_stage("split", stage)


if __name__ == "__main__":
    main()
