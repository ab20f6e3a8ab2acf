import pandas as pd
import pytest

from pipelines import config, promote, registry
from pipelines.cli import main
from tests.factories import PROMOTE_PARAMS, build_candidate_workspace, next_candidate


@pytest.fixture()
def candidate_workspace(workspace):
    return build_candidate_workspace(workspace)


@pytest.fixture()
def two_promotions(candidate_workspace):
    promote.promote(candidate_workspace, PROMOTE_PARAMS)
    next_candidate(candidate_workspace)
    promote.promote(candidate_workspace, PROMOTE_PARAMS)
    return candidate_workspace


def run_cli(capsys, *argv):
    code = main(["models", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_marks_production(two_promotions, capsys):
    code, out, _ = run_cli(capsys, "list")
    lines = out.strip().splitlines()
    assert code == 0
    assert lines[1].startswith("  v0001")
    assert lines[1].endswith("intact")
    assert lines[2].startswith("* v0002")


def test_list_flags_edited_version(two_promotions, capsys):
    (two_promotions / "models/registry/v0001/items.parquet").write_bytes(b"edited")
    _, out, _ = run_cli(capsys, "list")
    assert out.strip().splitlines()[1].endswith("CHANGED")


def test_show_prints_card(two_promotions, capsys):
    code, out, _ = run_cli(capsys, "show", "2")
    assert code == 0
    assert out.startswith("version v0002\n")
    assert "  files:        intact" in out
    assert "  serves:       model.pt\n" in out
    assert "test_ndcg@10                 0.2000  [0.1500, 0.2500]" in out


def test_show_unknown_version(two_promotions, capsys):
    code, _, err = run_cli(capsys, "show", "v0009")
    assert code == 1
    assert err.startswith("error: model version 'v0009' not found")


def test_rollback_then_promote(two_promotions, capsys):
    code, out, _ = run_cli(capsys, "rollback", "--reason", "bad reviews")
    assert code == 0
    assert out.startswith("production: v0002 -> v0001 (rollback); recommendations written to")
    assert registry.production(two_promotions)["version"] == "v0001"
    assert set(pd.read_parquet(two_promotions / promote.RECOMMENDATIONS_FILE)["model_version"]) == {"v0001"}

    code, out, _ = run_cli(capsys, "promote", "v2", "--reason", "fixed upstream")
    assert code == 0
    assert registry.production(two_promotions)["version"] == "v0002"
    _, out, _ = run_cli(capsys, "history")
    assert [line.split()[1] for line in out.strip().splitlines()] == ["promote", "promote", "rollback", "promote"]
    assert out.strip().splitlines()[-1].endswith("fixed upstream")


def test_rollback_error_keeps_pointer(candidate_workspace, capsys):
    promote.promote(candidate_workspace, PROMOTE_PARAMS)
    before = (candidate_workspace / config.PRODUCTION_POINTER).read_text()
    code, _, err = run_cli(capsys, "rollback", "--reason", "try")
    assert code == 1
    assert err.startswith("error: no previous production version to roll back to")
    assert (candidate_workspace / config.PRODUCTION_POINTER).read_text() == before


def test_promote_requires_reason(two_promotions, capsys):
    with pytest.raises(SystemExit):
        main(["models", "promote", "v0001"])
    assert "--reason" in capsys.readouterr().err
