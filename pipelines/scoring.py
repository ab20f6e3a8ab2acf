"""Top-K scoring over the whole catalog, shared by evaluate, promote and recommend."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from pipelines import features
from pipelines.metrics import mask_seen


def user_state(frames: list[pd.DataFrame], item_ids: list[str], user_ids: list[str],
               history_length: int) -> dict[str, np.ndarray]:
    """Latest histories and seen-item CSR for every user, from interaction frames in any order.

    Rows whose user or item the model does not know are ignored: the model has
    no embedding for them.
    """
    item_index = {item_id: index + 1 for index, item_id in enumerate(item_ids)}
    user_index = {user_id: index + 1 for index, user_id in enumerate(user_ids)}
    frame = pd.concat(frames, ignore_index=True)
    users = frame["user_id"].astype(str).map(user_index)
    items = frame["item_id"].astype(str).map(item_index)
    known = (users.notna() & items.notna()).to_numpy()
    users = users[known].to_numpy(np.int64)
    items = items[known].to_numpy(np.int64)
    times = frame["timestamp"].to_numpy()[known]
    users, items = features.concat_sorted((users, items, times))
    indptr, indices = features.seen_items(users, items, len(user_ids))
    return {
        "histories": features.latest_histories(users, items, len(user_ids), history_length),
        "seen_indptr": indptr,
        "seen_indices": indices,
    }


@torch.no_grad()
def model_top_k(model, users: np.ndarray, state: dict[str, np.ndarray], k: int,
                batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Top-K item indices and scores for each user index, excluding items the user has seen."""
    model.eval()
    top_items, top_scores = [], []
    for start in range(0, len(users), batch_size):
        batch = users[start:start + batch_size]
        scores = model(torch.from_numpy(batch), torch.from_numpy(state["histories"][batch]))
        mask_seen(scores, batch, state["seen_indptr"], state["seen_indices"])
        best = torch.topk(scores, k, dim=1)
        top_items.append(best.indices.numpy())
        top_scores.append(best.values.numpy())
    if not top_items:
        return np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)
    return np.concatenate(top_items), np.concatenate(top_scores)


def popularity_top_k(popularity: np.ndarray, users: np.ndarray, state: dict[str, np.ndarray],
                     k: int, batch_size: int = 4096) -> np.ndarray:
    """Top-K by interaction count (index 0 is padding), excluding items each user has seen."""
    base = torch.as_tensor(popularity, dtype=torch.float64).clone()
    base[0] = float("-inf")
    top_items = []
    for start in range(0, len(users), batch_size):
        batch = users[start:start + batch_size]
        scores = base.expand(len(batch), -1).clone()
        mask_seen(scores, batch, state["seen_indptr"], state["seen_indices"])
        top_items.append(torch.topk(scores, k, dim=1).indices.numpy())
    return np.concatenate(top_items) if top_items else np.zeros((0, k), dtype=np.int64)
