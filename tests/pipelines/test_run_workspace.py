import pytest
import yaml

from pipelines import config, run_workspace
from pipelines.errors import ConfigError


def params_of(root):
    return yaml.safe_load((root / config.PARAMS_FILE).read_text())


def test_form_defaults_give_no_overrides():
    form = {field.name: field.default for field in run_workspace.FORM_FIELDS}
    assert run_workspace.overrides_from_form({**form, "overrides": {}}) == {}


def test_form_values_map_to_params_keys():
    form = {"dataset": "files", "epochs": 2, "num_workers": None, "force_promote": True,
            "overrides": {"train.learning_rate": 0.003, "train.epochs": 9}}
    overrides = run_workspace.overrides_from_form(form)
    assert overrides == {"ingest.dataset": "files", "train.epochs": 2, "promote.force": True,
                         "train.learning_rate": 0.003}


def test_form_overrides_must_be_object():
    with pytest.raises(ConfigError, match="form field 'overrides': expected an object"):
        run_workspace.overrides_from_form({"overrides": ["train.epochs", 2]})


def test_every_form_field_names_a_params_key(workspace):
    keys = {field.key: "x" for field in run_workspace.FORM_FIELDS}
    run_workspace.check_overrides(params_of(workspace), keys)


def test_unknown_key_is_named(workspace):
    with pytest.raises(ConfigError, match=r"no key 'train\.epoch' \('epoch' not found under train; known keys "
                                          r"there: .*epochs"):
        run_workspace.check_overrides(params_of(workspace), {"train.epoch": 3})


def test_section_cannot_be_overridden(workspace):
    with pytest.raises(ConfigError, match="'train' is a section"):
        run_workspace.check_overrides(params_of(workspace), {"train": {"epochs": 1}})


def test_key_below_a_value_is_rejected(workspace):
    with pytest.raises(ConfigError, match="'seed' not found under train.epochs"):
        run_workspace.check_overrides(params_of(workspace), {"train.epochs.seed": 1})


def test_claim_applies_and_release_restores(workspace):
    original = (workspace / config.PARAMS_FILE).read_bytes()
    record = run_workspace.claim(workspace, "retrain/run1", {"train.epochs": 1, "ingest.files.items": "i.csv"})
    assert record["owner"] == "retrain/run1"
    params = params_of(workspace)
    assert params["train"]["epochs"] == 1
    assert params["ingest"]["files"]["items"] == "i.csv"
    assert params["train"]["seed"] == 42
    assert run_workspace.read_owner(workspace)["overrides"] == {"train.epochs": 1, "ingest.files.items": "i.csv"}

    assert run_workspace.release(workspace, "retrain/run1") is True
    assert (workspace / config.PARAMS_FILE).read_bytes() == original
    assert run_workspace.read_owner(workspace) is None


def test_claim_without_overrides_leaves_params(workspace):
    original = (workspace / config.PARAMS_FILE).read_bytes()
    run_workspace.claim(workspace, "nightly/run1", {})
    assert (workspace / config.PARAMS_FILE).read_bytes() == original
    assert run_workspace.release(workspace, "nightly/run1") is True
    assert (workspace / config.PARAMS_FILE).read_bytes() == original


def test_second_run_is_busy(workspace):
    run_workspace.claim(workspace, "nightly/run1", {})
    with pytest.raises(run_workspace.WorkspaceBusy, match=r"in use by run 'nightly/run1' since .*delete .*owner\.json"):
        run_workspace.claim(workspace, "retrain/run2", {"train.epochs": 1})
    assert params_of(workspace)["train"]["epochs"] == 6


def test_same_run_claims_again_from_original(workspace):
    original = (workspace / config.PARAMS_FILE).read_bytes()
    run_workspace.claim(workspace, "retrain/run1", {"train.epochs": 1})
    run_workspace.claim(workspace, "retrain/run1", {"train.epochs": 1})
    run_workspace.release(workspace, "retrain/run1")
    assert (workspace / config.PARAMS_FILE).read_bytes() == original


def test_bad_override_claims_nothing(workspace):
    with pytest.raises(ConfigError, match="no key 'train.epoch'"):
        run_workspace.claim(workspace, "retrain/run1", {"train.epoch": 1})
    assert run_workspace.read_owner(workspace) is None


def test_release_by_other_run_keeps_claim(workspace):
    run_workspace.claim(workspace, "retrain/run1", {"train.epochs": 1})
    assert run_workspace.release(workspace, "nightly/run9") is False
    assert run_workspace.read_owner(workspace)["owner"] == "retrain/run1"
    assert params_of(workspace)["train"]["epochs"] == 1
