import math

import numpy as np
import pytest
import torch

from pipelines import metrics


def csr(targets):
    indptr = np.r_[0, np.cumsum([len(items) for items in targets])]
    return indptr, np.array([item for items in targets for item in items], dtype=np.int64)


def test_hand_computed_values():
    top = np.array([[3, 1, 2], [5, 6, 7]])
    indptr, indices = csr([[1, 9], [7]])
    result = metrics.per_user_metrics(top, indptr, indices)
    # user 0: one of two targets at rank 2; user 1: its target at rank 3.
    assert result["recall"] == pytest.approx([0.5, 1.0])
    assert result["hit_rate"] == pytest.approx([1.0, 1.0])
    assert result["mrr"] == pytest.approx([0.5, 1 / 3])
    idcg_two = 1 + 1 / math.log2(3)
    assert result["ndcg"] == pytest.approx([(1 / math.log2(3)) / idcg_two, 1 / math.log2(4)])


def test_miss_scores_zero():
    result = metrics.per_user_metrics(np.array([[1, 2]]), *csr([[3]]))
    assert all(values[0] == 0 for values in result.values())


def test_summary_names_split_and_k():
    top = np.array([[1, 2], [2, 3]])
    result = metrics.summary(top, *csr([[1], [4]]), n_items=4, split="test")
    assert result == pytest.approx({
        "test_recall@2": 0.5, "test_ndcg@2": 0.5, "test_mrr@2": 0.5, "test_hit_rate@2": 0.5,
        "test_coverage@2": 0.75,
    })


def test_mask_seen_excludes_history():
    scores = torch.zeros(2, 5)
    indptr, indices = csr([[], [1, 4], [2]])
    metrics.mask_seen(scores, np.array([1, 2]), indptr, indices)
    assert torch.isinf(scores[0, [1, 4]]).all()
    assert torch.isinf(scores[1, 2])
    assert torch.isfinite(scores).sum() == 7
