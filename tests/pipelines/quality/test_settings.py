import pandas as pd
import pytest

from pipelines import config
from pipelines.errors import ConfigError
from pipelines.quality.checks import BLOCK, CHECKS, WARN, resolve_severities
from pipelines.quality.settings import rules_from_params
from tests.conftest import REPO


def params(**changes):
    section = config.section(config.load_params(REPO / config.PARAMS_FILE), "validate")
    return {**section, **changes}


def test_repository_params_read():
    rules = rules_from_params(params(run_date="2026-03-08"))
    assert rules.run_time == pd.Timestamp("2026-03-08", tz="UTC")
    assert rules.images.modes == ("L", "RGB", "RGBA")
    assert rules.severity["interactions.freshness"] == WARN
    assert rules.severity["interactions.rating_range"] == BLOCK


def test_params_list_every_check():
    listed = {f"{table}.{name}" for table, checks in params()["severity"].items() for name in checks}
    assert listed == set(CHECKS)


def test_empty_run_date_uses_now():
    now = pd.Timestamp("2030-01-02 03:04", tz="UTC")
    assert rules_from_params(params(run_date=""), now=now).run_time == now


def test_unlisted_check_blocks():
    assert resolve_severities({"interactions": {"freshness": "warn"}})["items.unique_ids"] == BLOCK


@pytest.mark.parametrize("mapping, pattern", [
    ({"interactions": {"freshness": "stop"}},
     r"validate\.severity\.interactions\.freshness is 'stop', expected one of: block, warn"),
    ({"interactions": {"fresh": "warn"}}, r"validate\.severity\.interactions\.fresh is not a check; expected one of"),
    ({"interactions": "warn"}, r"validate\.severity\.interactions is 'warn', expected a mapping of checks"),
])
def test_bad_severity_rejected(mapping, pattern):
    with pytest.raises(ConfigError, match=pattern):
        resolve_severities(mapping)


@pytest.mark.parametrize("changes, pattern", [
    ({"run_date": "yesterday"}, r"validate\.run_date is 'yesterday', expected an ISO 8601 date"),
    ({"rating_min": "one"}, r"validate\.rating_min is 'one', expected a number"),
    ({"rating_min": 6.0}, r"validate\.rating_min \(6\.0\) is greater than rating_max \(5\.0\)"),
    ({"freshness_max_days": -1}, r"validate\.freshness_max_days is -1, expected at least 0"),
    ({"rating_values": [1, "two"]}, r"validate\.rating_values contains 'two', expected numbers only"),
    ({"drift": {**params()["drift"], "metric": "kl"}}, r"validate\.drift\.metric is 'kl', expected one of: psi, js"),
    ({"images": {**params()["images"], "min_side": 64, "max_side": 32}},
     r"validate\.images\.min_side \(64\) is greater than max_side \(32\)"),
])
def test_bad_params_rejected(changes, pattern):
    with pytest.raises(ConfigError, match=pattern):
        rules_from_params(params(**changes))


def test_missing_key_named():
    section = params()
    del section["snapshot"]["new_users_max_share"]
    with pytest.raises(ConfigError, match=r"validate\.snapshot\.new_users_max_share is missing"):
        rules_from_params(section)
