import numpy as np
import pytest

from pipelines import slices
from pipelines.errors import ConfigError


def test_user_segments_split_on_threshold():
    segments = slices.user_segments(np.array([3, 30, 31, 100]), 30)
    assert segments["users:new"].tolist() == [True, True, False, False]
    assert segments["users:active"].tolist() == [False, False, True, True]


def test_item_buckets_by_interaction_share():
    # Counts of items 1..6: 50, 20, 15, 10, 5, 0 (total 100). Shares before each item: 0, .5, .7, .85, .95.
    counts = np.array([0, 50, 20, 15, 10, 5, 0])
    labels = slices.item_buckets(counts, head_share=0.5, torso_share=0.3)
    assert labels.tolist() == ["cold", "head", "torso", "torso", "tail", "tail", "cold"]


def test_item_buckets_all_cold_without_interactions():
    assert slices.item_buckets(np.zeros(4), 0.5, 0.3).tolist() == ["cold"] * 4


def test_restrict_targets_keeps_users_with_bucket_items():
    indptr, indices = np.array([0, 2, 3, 5]), np.array([1, 4, 2, 3, 4])
    keep = np.array([False, False, False, True, True])  # items 3 and 4
    rows, kept_indptr, kept_indices = slices.restrict_targets(indptr, indices, keep)
    assert rows.tolist() == [0, 2]
    assert kept_indptr.tolist() == [0, 1, 3]
    assert kept_indices.tolist() == [4, 3, 4]


@pytest.mark.parametrize("params", [{"head_share": 0.7, "torso_share": 0.3}, {"head_share": -0.1},
                                    {"torso_share": "x"}])
def test_bad_shares_rejected(params):
    with pytest.raises(ConfigError, match=r"evaluate\.slices\.head_share .* and torso_share .* are invalid"):
        slices.slice_params(params)


def test_bad_user_threshold_rejected():
    with pytest.raises(ConfigError, match=r"evaluate\.slices\.new_user_max_interactions is -1"):
        slices.slice_params({"new_user_max_interactions": -1})
