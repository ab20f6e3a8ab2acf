import numpy as np
import pytest

from pipelines import bootstrap
from pipelines.errors import ConfigError


def test_weights_resample_every_user_count():
    weights = bootstrap.resample_weights(50, 20, seed=1)
    assert weights.shape == (20, 50)
    assert (weights.sum(axis=1) == 50).all()


def test_weights_repeat_with_seed():
    assert (bootstrap.resample_weights(30, 10, seed=7) == bootstrap.resample_weights(30, 10, seed=7)).all()
    assert (bootstrap.resample_weights(30, 10, seed=7) != bootstrap.resample_weights(30, 10, seed=8)).any()


def test_interval_covers_truth_on_synthetic_hits():
    # Hits are Bernoulli(0.3) per user; a 90% interval should contain 0.3 in about 90% of data sets.
    rng = np.random.default_rng(0)
    trials, covered = 200, 0
    for trial in range(trials):
        hits = (rng.random(400) < 0.3).astype(float)
        weights = bootstrap.resample_weights(len(hits), 400, seed=trial)
        interval = bootstrap.intervals({"hit_rate": hits}, weights, 0.9)["hit_rate"]
        covered += interval["low"] <= 0.3 <= interval["high"]
    assert 0.84 <= covered / trials <= 0.96


def test_interval_width_matches_standard_error():
    rng = np.random.default_rng(1)
    values = rng.normal(0.0, 1.0, 2000)
    interval = bootstrap.intervals({"x": values}, bootstrap.resample_weights(2000, 2000, seed=0), 0.95)["x"]
    expected_half_width = 1.96 * values.std() / np.sqrt(len(values))
    assert (interval["high"] - interval["low"]) / 2 == pytest.approx(expected_half_width, rel=0.1)


def test_paired_difference_detects_small_shift():
    # The candidate is the reference plus 0.01 for every user: unpaired intervals overlap, the paired one is tight.
    rng = np.random.default_rng(2)
    reference = rng.random(500)
    candidate = reference + 0.01
    weights = bootstrap.resample_weights(500, 500, seed=0)
    difference = bootstrap.difference_intervals({"m": candidate}, {"m": reference}, weights, 0.95)["m"]
    assert difference["value"] == pytest.approx(0.01)
    assert difference["low"] == pytest.approx(0.01)
    assert difference["high"] == pytest.approx(0.01)
    separate = bootstrap.intervals({"c": candidate, "r": reference}, weights, 0.95)
    assert separate["c"]["low"] < separate["r"]["high"]


def test_difference_skips_metrics_missing_from_reference():
    weights = bootstrap.resample_weights(3, 10, seed=0)
    result = bootstrap.difference_intervals({"a": np.ones(3), "b": np.ones(3)}, {"a": np.zeros(3)}, weights, 0.9)
    assert list(result) == ["a"]


@pytest.mark.parametrize("params, key", [({"resamples": 5}, "resamples"), ({"confidence": 1.0}, "confidence"),
                                         ({"seed": "x"}, "seed")])
def test_bad_bootstrap_params_rejected(params, key):
    with pytest.raises(ConfigError, match=rf"evaluate\.bootstrap\.{key} is"):
        bootstrap.bootstrap_params(params)
