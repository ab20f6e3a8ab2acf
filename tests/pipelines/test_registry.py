import json

import pytest

from pipelines import config, registry
from pipelines.errors import RegistryError


@pytest.fixture()
def three_versions(tmp_path):
    """A registry with versions v0001..v0003 and no production pointer."""
    for number in (1, 2, 3):
        source = tmp_path / f"model{number}.pt"
        source.write_bytes(f"model {number}".encode())
        with registry.locked(tmp_path):
            registry.add_version(tmp_path, {"model.pt": source}, {"metrics": {"model": {"test_ndcg@10": 0.1}}})
    return tmp_path


def pointer_text(root):
    return (root / config.PRODUCTION_POINTER).read_text()


def test_versions_numbered_in_order(three_versions):
    assert registry.list_versions(three_versions) == ["v0001", "v0002", "v0003"]
    assert registry.next_version(three_versions) == "v0004"


def test_card_lists_file_checksums(three_versions):
    card = registry.read_card(three_versions, "v0002")
    assert card["version"] == "v0002"
    assert card["files"]["model.pt"]["bytes"] == len(b"model 2")
    assert card["files"]["model.pt"]["sha256"] == registry.file_digest(three_versions / "model2.pt")


def test_staging_leftovers_removed(three_versions):
    leftover = three_versions / registry.STAGING_DIR / "v0004"
    leftover.mkdir(parents=True)
    (leftover / "model.pt").write_bytes(b"half")
    source = three_versions / "model4.pt"
    source.write_bytes(b"model 4")
    with registry.locked(three_versions):
        assert registry.add_version(three_versions, {"model.pt": source}, {}) == "v0004"
    assert list((three_versions / registry.STAGING_DIR).iterdir()) == []


@pytest.mark.parametrize("text, version", [("v0003", "v0003"), ("v3", "v0003"), ("3", "v0003"), ("best", "best")])
def test_version_names_normalized(text, version):
    assert registry.normalize_version(text) == version


def test_unknown_version_rejected(three_versions):
    with pytest.raises(RegistryError, match=r"model version 'v0042' not found in .*models/registry "
                                            r"\(known: v0001, v0002, v0003\)"):
        registry.promote_version(three_versions, "v0042", "test")
    assert registry.production(three_versions) is None


def test_edited_file_detected(three_versions):
    registry.promote_version(three_versions, "v0001", "first")
    before = pointer_text(three_versions)
    (three_versions / "models/registry/v0002/model.pt").write_bytes(b"edited by hand")
    with pytest.raises(RegistryError, match=r"v0002 was changed after registration: model\.pt differs from its "
                                            r"checksum in the model card\. Restore it"):
        registry.promote_version(three_versions, "v0002", "manual")
    assert pointer_text(three_versions) == before


def test_missing_and_extra_files_detected(three_versions):
    folder = three_versions / "models/registry/v0003"
    (folder / "model.pt").unlink()
    (folder / "notes.txt").write_text("added by hand")
    assert registry.version_problems(three_versions, "v0003") == [
        "model.pt is missing", "notes.txt is not listed in the model card"]


def test_card_without_checksums_detected(three_versions):
    card_path = three_versions / "models/registry/v0001" / registry.CARD_FILE
    card_path.write_text(json.dumps({"version": "v0001"}))
    with pytest.raises(RegistryError, match=r"model_card\.json: model card has no file checksums"):
        registry.verify_version(three_versions, "v0001")


def test_history_records_every_change(three_versions, monkeypatch):
    monkeypatch.setenv("SHOPREC_TRIGGERED_BY", "alice")
    registry.promote_version(three_versions, "v0001", "first model")
    registry.promote_version(three_versions, "v0002", "better model")
    history = registry.production(three_versions)["history"]
    assert [(entry["action"], entry["from"], entry["to"], entry["by"], entry["reason"]) for entry in history] == [
        ("promote", None, "v0001", "alice", "first model"), ("promote", "v0001", "v0002", "alice", "better model")]
    assert all(entry["at"].endswith("Z") for entry in history)


def test_rollback_restores_previous(three_versions):
    for version in ("v0001", "v0002", "v0003"):
        registry.promote_version(three_versions, version, "nightly")
    pointer = registry.rollback(three_versions, "v0003 recommends sold-out items")
    assert (pointer["version"], pointer["previous"]) == ("v0002", "v0003")
    assert pointer["history"][-1]["action"] == "rollback"
    assert pointer["history"][-1]["reason"] == "v0003 recommends sold-out items"
    # A second rollback goes further back instead of returning to the version rolled back.
    assert registry.rollback(three_versions, "again")["version"] == "v0001"


def test_rollback_without_previous_rejected(three_versions):
    registry.promote_version(three_versions, "v0001", "first")
    before = pointer_text(three_versions)
    with pytest.raises(RegistryError, match=r"no previous production version to roll back to: v0001 is the first"):
        registry.rollback(three_versions, "oops")
    assert pointer_text(three_versions) == before


def test_rollback_without_production_rejected(three_versions):
    with pytest.raises(RegistryError, match=r"no production model to roll back: nothing has been promoted yet"):
        registry.rollback(three_versions, "oops")


def test_rollback_to_edited_version_rejected(three_versions):
    registry.promote_version(three_versions, "v0001", "first")
    registry.promote_version(three_versions, "v0002", "second")
    before = pointer_text(three_versions)
    (three_versions / "models/registry/v0001/model.pt").write_bytes(b"edited")
    with pytest.raises(RegistryError, match=r"v0001 was changed after registration"):
        registry.rollback(three_versions, "back")
    assert pointer_text(three_versions) == before


def test_damaged_pointer_reported(three_versions):
    (three_versions / config.PRODUCTION_POINTER).write_text("{not json")
    with pytest.raises(RegistryError, match=r"production\.json: cannot read the production pointer"):
        registry.production(three_versions)


def test_pointer_without_history_still_rolls_back(three_versions):
    # Pointers written before the history existed name only the version and the previous one.
    (three_versions / config.PRODUCTION_POINTER).write_text(json.dumps({"version": "v0002", "previous": "v0001"}))
    assert registry.rollback(three_versions, "back")["version"] == "v0001"


def test_promoting_production_again_rejected(three_versions):
    registry.promote_version(three_versions, "v0001", "first")
    with pytest.raises(RegistryError, match="v0001 is already production; nothing to promote"):
        registry.promote_version(three_versions, "v0001", "again")
    assert len(registry.production(three_versions)["history"]) == 1
    with pytest.raises(RegistryError, match="no previous production version to roll back to"):
        registry.rollback(three_versions, "after a repeated promotion")
