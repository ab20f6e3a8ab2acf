import numpy as np
import pytest

from pipelines import baselines
from pipelines.errors import ConfigError

# Four users (rows 1..4) and four items (columns 1..4); row and column 0 are padding.
SEEN = [[], [1, 2], [2, 3], [1, 2, 3], [3, 4]]


def seen_state(seen=SEEN):
    indptr = np.r_[0, np.cumsum([len(items) for items in seen])]
    return {"seen_indptr": indptr, "seen_indices": np.array([item for items in seen for item in items], dtype=np.int64)}


def dense(seen=SEEN, n_items=4):
    matrix = np.zeros((len(seen), n_items + 1))
    for user, items in enumerate(seen):
        matrix[user, items] = 1.0
    return matrix


def test_interaction_matrix_is_binary():
    state = seen_state([[], [1, 1, 2]])
    matrix = baselines.interaction_matrix(state["seen_indptr"], state["seen_indices"], 3).toarray()
    assert matrix.tolist() == [[0, 0, 0, 0], [0, 1, 1, 0]]


def test_item_counts_count_users():
    state = seen_state()
    counts = baselines.item_counts(baselines.interaction_matrix(state["seen_indptr"], state["seen_indices"], 4))
    assert counts.tolist() == [0, 2, 3, 3, 1]


def test_ease_matches_numpy_reference():
    state = seen_state()
    matrix = baselines.interaction_matrix(state["seen_indptr"], state["seen_indices"], 4)
    x = dense()
    l2 = 2.0
    inverse = np.linalg.inv(x.T @ x + l2 * np.eye(5))
    expected = np.zeros((5, 5))
    for i in range(5):
        for j in range(5):
            if i != j:
                expected[i, j] = -inverse[i, j] / inverse[j, j]
    assert baselines.ease_weights(matrix, l2) == pytest.approx(expected)


def test_ease_minimises_its_objective():
    # B is the minimiser of ||X - XB||^2 + l2 ||B||^2 with diag(B) = 0: the gradient is zero off the diagonal.
    state = seen_state()
    matrix = baselines.interaction_matrix(state["seen_indptr"], state["seen_indices"], 4)
    x, l2 = dense(), 3.0
    weights = baselines.ease_weights(matrix, l2)
    gradient = -2 * x.T @ (x - x @ weights) + 2 * l2 * weights
    off_diagonal = ~np.eye(5, dtype=bool)
    assert np.abs(gradient[off_diagonal]).max() < 1e-9
    assert np.diag(weights).tolist() == [0.0] * 5


def test_item_knn_matches_numpy_reference():
    state = seen_state()
    matrix = baselines.interaction_matrix(state["seen_indptr"], state["seen_indices"], 4)
    x = dense()
    expected = np.zeros((5, 5))
    for i in range(1, 5):
        for j in range(1, 5):
            if i != j:
                expected[i, j] = x[:, i] @ x[:, j] / np.sqrt(x[:, i].sum() * x[:, j].sum())
    assert baselines.item_knn_weights(matrix, neighbours=5) == pytest.approx(expected)


def test_item_knn_keeps_top_neighbours_per_item():
    state = seen_state()
    matrix = baselines.interaction_matrix(state["seen_indptr"], state["seen_indices"], 4)
    weights = baselines.item_knn_weights(matrix, neighbours=1)
    # Item 4's only co-occurring item is 3 (cosine 1/sqrt(3)); item 1's best neighbour is 2 (2/sqrt(6)).
    assert weights[:, 4].tolist() == pytest.approx([0, 0, 0, 1 / np.sqrt(3), 0])
    assert weights[:, 1].tolist() == pytest.approx([0, 0, 2 / np.sqrt(6), 0, 0])
    assert (np.count_nonzero(weights, axis=0) <= 1).all()


def test_item_item_top_k_excludes_seen():
    state = seen_state()
    matrix = baselines.interaction_matrix(state["seen_indptr"], state["seen_indices"], 4)
    weights = baselines.item_knn_weights(matrix, neighbours=4)
    top = baselines.item_item_top_k(weights, matrix, np.array([1, 4]), state, 2)
    # User 1 saw items 1 and 2: item 3 (co-occurs with both) beats item 4 (with neither).
    assert top[0].tolist() == [3, 4]
    assert set(top[1].tolist()) == {1, 2}


def test_rank_baselines_skips_item_models_for_large_catalogs():
    rankings, notes = baselines.rank_baselines(seen_state(), 4, np.array([1, 2]), 2, {"max_items": 3})
    assert list(rankings) == ["popularity"]
    assert notes == ["item-kNN and EASE skipped: the catalog has 4 items, more than evaluate.baselines.max_items (3); "
                     "both build an items x items matrix"]


def test_rank_baselines_ranks_all_three():
    rankings, notes = baselines.rank_baselines(seen_state(), 4, np.array([1, 2]), 2, {})
    assert sorted(rankings) == ["ease", "item_knn", "popularity"]
    assert notes == []
    assert rankings["popularity"][0].tolist() == [3, 4]  # user 1 saw items 1 and 2; item 3 is the most popular left


@pytest.mark.parametrize("params, key", [({"knn_neighbours": 0}, "knn_neighbours"), ({"ease_l2": -1}, "ease_l2"),
                                         ({"max_items": "many"}, "max_items")])
def test_bad_baseline_params_rejected(params, key):
    with pytest.raises(ConfigError, match=rf"evaluate\.baselines\.{key} is"):
        baselines.baseline_params(params)
