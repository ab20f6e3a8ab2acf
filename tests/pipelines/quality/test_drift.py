import numpy as np
import pandas as pd
import pytest

from pipelines import config
from pipelines.quality import drift
from pipelines.quality.settings import rules_from_params
from tests.conftest import REPO

DRIFT_CHECKS = ("snapshot.rating_drift", "snapshot.item_popularity_drift", "snapshot.user_activity_drift")


@pytest.fixture(scope="module")
def rules():
    return rules_from_params(config.section(config.load_params(REPO / config.PARAMS_FILE), "validate"))


@pytest.fixture(scope="module")
def movielens_profile(movielens_tables, rules):
    counts = drift.count_interactions(movielens_tables["interactions"])
    return drift.build_profile(counts, rules.rating_min, rules.rating_max)


def limits(rules):
    return {"snapshot.rating_drift": rules.drift.rating_max,
            "snapshot.item_popularity_drift": rules.drift.item_popularity_max,
            "snapshot.user_activity_drift": rules.drift.user_activity_max}


def drift_fires(profile, interactions, rules, metric="psi"):
    """Return, per drift check, whether the measure exceeds its threshold plus its sampling allowance."""
    measures = drift.compare(profile, drift.count_interactions(interactions), metric)
    return {check: measures[check].value > limits(rules)[check] + measures[check].allowance
            for check in DRIFT_CHECKS}


def test_psi_zero_for_same_shares():
    assert drift.population_stability_index([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == pytest.approx(0.0)


def test_psi_known_value():
    # (0.5 - 0.25) ln(0.5 / 0.25) + (0.5 - 0.75) ln(0.5 / 0.75)
    expected = 0.25 * np.log(2) - 0.25 * np.log(2 / 3)
    assert drift.population_stability_index([0.25, 0.75], [0.5, 0.5]) == pytest.approx(expected, rel=1e-6)


def test_jensen_shannon_bounds():
    assert drift.jensen_shannon_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    assert drift.jensen_shannon_distance([0.4, 0.6], [0.4, 0.6]) == pytest.approx(0.0)


def test_sampling_allowance_shrinks_with_size():
    shares = [0.1] * 10
    small = drift.sampling_allowance(shares, shares, (40, 40), "psi")
    large = drift.sampling_allowance(shares, shares, (100_000, 100_000), "psi")
    assert small == pytest.approx(2 * 9 * (1 / 40 + 1 / 40))
    assert large < 0.001


@pytest.mark.parametrize("metric", ["psi", "js"])
def test_resample_stays_quiet(movielens_tables, movielens_profile, rules, metric):
    interactions = movielens_tables["interactions"]
    profile = movielens_profile
    if metric == "js":
        profile = drift.build_profile(drift.count_interactions(interactions), rules.rating_min, rules.rating_max)
    resample = interactions.sample(len(interactions), replace=True, random_state=7)
    measures = drift.compare(profile, drift.count_interactions(resample), metric)
    js_limits = {check: 0.1 for check in DRIFT_CHECKS}
    bounds = limits(rules) if metric == "psi" else js_limits
    for check in DRIFT_CHECKS:
        assert measures[check].value <= bounds[check] + measures[check].allowance, (check, measures[check])


def test_rating_shift_fires(movielens_tables, movielens_profile, rules):
    interactions = movielens_tables["interactions"]
    shifted = interactions.assign(rating=(interactions["rating"] - 2).clip(lower=1))
    fired = drift_fires(movielens_profile, shifted, rules)
    assert fired == {"snapshot.rating_drift": True, "snapshot.item_popularity_drift": False,
                     "snapshot.user_activity_drift": False}


def test_popularity_collapse_fires(movielens_tables, movielens_profile, rules):
    interactions = movielens_tables["interactions"]
    rng = np.random.default_rng(3)
    collapsed = interactions.assign(item_id=np.where(rng.random(len(interactions)) < 0.3, "1000",
                                                     interactions["item_id"]))
    assert drift_fires(movielens_profile, collapsed, rules)["snapshot.item_popularity_drift"]


def test_bot_users_fire_activity(movielens_tables, movielens_profile, rules):
    interactions = movielens_tables["interactions"]
    bots = pd.DataFrame({"user_id": [f"bot-{n}" for n in range(300) for _ in range(150)], "item_id": "1",
                         "timestamp": 893_000_000, "rating": 3.0})
    assert drift_fires(movielens_profile, pd.concat([interactions, bots]), rules)["snapshot.user_activity_drift"]


def test_new_ids_share_and_examples(movielens_tables, movielens_profile):
    interactions = movielens_tables["interactions"].copy()
    interactions.loc[:9, "user_id"] = [f"new-{n}" for n in range(10)]
    measures = drift.compare(movielens_profile, drift.count_interactions(interactions), "psi")
    new_users = measures["snapshot.new_users"]
    assert new_users.value == pytest.approx(10 / interactions["user_id"].nunique(), abs=1e-4)
    assert len(new_users.examples) == 5
    assert all(example.startswith("new-") for example in new_users.examples)


def test_row_count_ratio(movielens_tables, movielens_profile):
    half = movielens_tables["interactions"].iloc[:50_000]
    measure = drift.compare(movielens_profile, drift.count_interactions(half), "psi")["snapshot.row_count"]
    assert measure.value == 0.5
    assert measure.examples == [{"rows": 50_000, "last_good_rows": 100_000}]
