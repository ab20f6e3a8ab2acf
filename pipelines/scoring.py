"""Top-K scoring over the whole catalog, shared by evaluate, promote and recommend."""

from __future__ import annotations

import time

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
                batch_size: int = 1024, model_users: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-K item indices and scores for each user index, excluding items the user has seen.

    `users` index the rows of `state`; `model_users`, when given, are the
    same users' indices in the model's user embedding (default: `users`).
    """
    model.eval()
    model_users = users if model_users is None else model_users
    top_items, top_scores = [], []
    for start in range(0, len(users), batch_size):
        batch = users[start:start + batch_size]
        embedding_rows = np.ascontiguousarray(model_users[start:start + batch_size])
        scores = model(torch.from_numpy(embedding_rows), torch.from_numpy(state["histories"][batch]))
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


def rank_with_model(model, bundle: dict, frames: list[pd.DataFrame], item_ids: list[str], user_ids: list[str],
                    users: np.ndarray, k: int) -> np.ndarray:
    """Top-K lists of a saved model, as item indices of the evaluation's `item_ids`.

    `users` index `user_ids`. The model may number ids differently or lack
    some of them, as a production model trained on older data does. A user
    missing from the model is scored from their history with user index 0
    (a zero embedding), and an item missing from it is never recommended.
    """
    state = user_state(frames, bundle["item_ids"], user_ids, model.history_length)
    model_user_index = {user_id: index + 1 for index, user_id in enumerate(bundle["user_ids"])}
    to_model_user = np.array([0] + [model_user_index.get(user_id, 0) for user_id in user_ids], dtype=np.int64)
    top_items, _ = model_top_k(model, users, state, min(k, len(bundle["item_ids"])), model_users=to_model_user[users])

    item_index = {item_id: index + 1 for index, item_id in enumerate(item_ids)}
    to_item = np.array([0] + [item_index.get(item_id, 0) for item_id in bundle["item_ids"]], dtype=np.int64)
    ranked = to_item[top_items]
    # A model with fewer than k items fills its lists with padding, which never matches a target.
    return np.pad(ranked, ((0, 0), (0, k - ranked.shape[1])))


def time_top_k(model, users: np.ndarray, state: dict[str, np.ndarray], k: int, requests: int) -> np.ndarray:
    """Seconds per top-K request of one user each, for the first `requests` users (after one warm-up).

    Requests run on one CPU thread, as in a serving worker that handles one
    request at a time. With more threads, a single small request mostly waits
    for the threads to synchronise, and more so on a busy machine.
    """
    sample = users[:requests]
    if not len(sample):
        return np.zeros(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model_top_k(model, sample[:1], state, k)
        seconds = []
        for user in sample:
            started = time.perf_counter()
            model_top_k(model, np.array([user]), state, k)
            seconds.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    return np.array(seconds)
