"""Top-K recommendations from the production model: for one user, or for every known user at once.

Both serve the model file the version serves (`registry.served_file`): the
compressed model that the compress stage chose and the gate judged, or the
trained model in versions without one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import config, registry
from pipelines.candidates import load_candidate
from pipelines.errors import ConfigError, DataError
from pipelines.scoring import model_top_k, user_state


def recommend_for_user(user_id: str, k: int = 10) -> list[dict]:
    """Rank the catalog for `user_id` with the production model, excluding items the user has seen."""
    if k < 1:
        raise ConfigError(f"-k is {k}, expected a positive integer")
    root = config.workspace()
    folder = registry.production_folder(root)
    model, bundle = load_candidate(registry.served_file(folder))
    user_ids = bundle["user_ids"]
    try:
        user_index = user_ids.index(str(user_id))
    except ValueError:
        raise DataError(
            f"user '{user_id}' not found in production model {folder.name} ({len(user_ids)} known users)"
        ) from None
    history = pd.read_parquet(folder / "interactions.parquet")
    state = user_state([history[history["user_id"].astype(str) == str(user_id)]],
                       bundle["item_ids"], user_ids, model.history_length)
    k = min(k, len(bundle["item_ids"]))
    top_items, top_scores = model_top_k(model, np.array([user_index + 1]), state, k)
    titles = pd.read_parquet(folder / "items.parquet").set_index("item_id")["title"].astype(str)
    rows = []
    for rank, (index, score) in enumerate(zip(top_items[0], top_scores[0]), start=1):
        if not np.isfinite(score):
            break  # the user has seen everything else
        item_id = bundle["item_ids"][index - 1]
        rows.append({"rank": rank, "item_id": item_id, "title": titles.get(item_id, ""), "score": float(score),
                     "version": folder.name})
    return rows


def format_recommendations(user_id: str, rows: list[dict], requested: int | None = None) -> str:
    """Render the rows as text, saying so when fewer than the `requested` K were left to recommend."""
    if not rows:
        return f"no recommendations for user {user_id}: every item is already in their history"
    lines = [f"top {len(rows)} for user {user_id} (model {rows[0]['version']}):"]
    lines += [f"{row['rank']:>3}. {row['item_id']:>8}  {row['title']}  ({row['score']:.3f})" for row in rows]
    if requested is not None and len(rows) < requested:
        lines.append(f"only {len(rows)} of the {requested} requested: the user has seen every other item")
    return "\n".join(lines)


def batch_recommendations(folder: Path, k: int) -> pd.DataFrame:
    """Rank the top K for every user of the model in registry `folder`, from the version's own interactions.

    Columns: user_id, rank (1 = best), item_id, score, model_version. Users who
    have seen all but fewer than K items get fewer rows.
    """
    model, bundle = load_candidate(registry.served_file(folder))
    history = pd.read_parquet(folder / "interactions.parquet")
    user_ids, item_ids = bundle["user_ids"], bundle["item_ids"]
    state = user_state([history], item_ids, user_ids, model.history_length)
    users = np.arange(1, len(user_ids) + 1)
    top_items, top_scores = model_top_k(model, users, state, min(k, len(item_ids)))
    frame = pd.DataFrame({
        "user_id": np.repeat(np.array(user_ids, dtype=object), top_items.shape[1]),
        "rank": np.tile(np.arange(1, top_items.shape[1] + 1, dtype=np.int32), len(user_ids)),
        "item_id": np.array(item_ids, dtype=object)[top_items.ravel() - 1],
        "score": top_scores.ravel().astype(np.float64),
        "model_version": folder.name,
    })
    return frame[np.isfinite(frame["score"])].reset_index(drop=True)
