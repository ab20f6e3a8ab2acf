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


def test_popularity_percentiles_hand_computed():
    # Index 0 is padding; items 1..4 have counts 5, 0, 5, 2.
    percentiles = metrics.popularity_percentiles(np.array([0, 5, 0, 5, 2]))
    assert percentiles.tolist() == pytest.approx([0.0, 1.0, 0.25, 1.0, 0.5])


def test_popularity_bias_is_mean_percentile():
    percentiles = np.array([0.0, 1.0, 0.25, 1.0, 0.5])
    bias = metrics.popularity_bias_at_k(np.array([[1, 2], [4, 2]]), percentiles)
    assert bias.tolist() == pytest.approx([0.625, 0.375])


def test_summary_includes_popularity_bias():
    top = np.array([[1, 2], [2, 3]])
    percentiles = np.array([0.0, 1.0, 0.5, 0.25, 0.75])
    result = metrics.summary(top, *csr([[1], [4]]), n_items=4, split="test", percentiles=percentiles)
    assert result["test_popularity_bias@2"] == pytest.approx((0.75 + 0.375) / 2)


def test_ndcg_curve_per_cutoff():
    # One user whose only target is at rank 2: NDCG@1 = 0, NDCG@2 = NDCG@3 = 1 / log2(3).
    curve = metrics.ndcg_curve(np.array([[5, 7, 6]]), *csr([[7]]))
    assert curve.tolist() == pytest.approx([0.0, 1 / math.log2(3), 1 / math.log2(3)])
