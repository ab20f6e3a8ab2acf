"""Every case of the bad-input corpus runs through ingest and validate and must be rejected.

The corpus is tests/data/bad_inputs/, written by tests/data/make_bad_inputs.py.
Each case names the stage that must reject it and the check (validate) or the
message (ingest). A rejected case must change no downstream output, registry
entry or last good snapshot.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from pipelines import config, ingest, validate
from pipelines.errors import DataError
from pipelines.io import write_parquet_tables
from pipelines.quality.snapshots import QUALITY_DIR
from tests.conftest import REPO, update_params

DATA = REPO / "tests" / "data"
CASES_DIR = DATA / "bad_inputs"
CLEAN_DIR = DATA / "clean_shop"
RAW = Path("data/raw")
CASES = sorted(path.parent.name for path in CASES_DIR.glob("*/case.yaml"))
# Outputs of later stages and of earlier good runs, which a rejected input must leave as they were.
PROTECTED = ("data/split", "models", "data/quality/last_good.json", "data/quality/snapshots")


def prepare_workspace(root: Path, source: Path, params: dict) -> None:
    """Write the repository's params.yaml to a workspace, then install a case in it."""
    shutil.copyfile(REPO / config.PARAMS_FILE, root / config.PARAMS_FILE)
    install_case(root, source, params)


def install_case(root: Path, source: Path, params: dict) -> None:
    """Copy a case's files to data/raw/ of a workspace and point its params.yaml at them."""
    shutil.copytree(source, root / RAW, ignore=shutil.ignore_patterns("case.yaml"), dirs_exist_ok=True)
    files = {table: "" for table in config.TABLES}
    for path in sorted((root / RAW).iterdir()):
        if path.is_file() and path.stem in files:
            files[path.stem] = str(RAW / path.name)
    base = yaml.safe_load((CASES_DIR / "base_params.yaml").read_text(encoding="utf-8"))
    update_params(root, {**base, "ingest.files": files, **params})


def run_ingest(root: Path) -> None:
    tables = ingest.ingest(config.section(config.load_params(root / config.PARAMS_FILE), "ingest"))
    write_parquet_tables(tables, root / config.INGESTED_DIR)


def run_validate(root: Path):
    params = config.load_params(root / config.PARAMS_FILE)
    return validate.gate(root, config.section(params, "validate"), source=params["ingest"])


def seed_downstream(root: Path) -> None:
    """Write stand-ins for the split, the candidate, a registry version and the production pointer."""
    for relative in ("data/split/train.parquet", "models/candidate/model.pt",
                     "models/registry/v0001/model_card.json", "models/production.json"):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"stand-in for {relative}\n", encoding="utf-8")


def digest(root: Path) -> dict[str, str]:
    hashes = {}
    for relative in PROTECTED:
        target = root / relative
        if target.is_file():
            paths = [target]
        else:
            paths = sorted(target.rglob("*"))
        for path in paths:
            if path.is_file():
                hashes[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


@pytest.fixture(scope="module")
def last_good(tmp_path_factory):
    """The data/quality folder after the clean shop passed ingest and validate."""
    root = tmp_path_factory.mktemp("clean")
    prepare_workspace(root, CLEAN_DIR, {})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SHOPREC_WORKSPACE", str(root))
        run_ingest(root)
        outcome = run_validate(root)
    assert not outcome.blocked
    return root / QUALITY_DIR


def test_corpus_has_thirty_cases():
    assert len(CASES) >= 30


def test_corpus_matches_its_generator(tmp_path):
    spec = importlib.util.spec_from_file_location("make_bad_inputs", DATA / "make_bad_inputs.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    generator.generate(tmp_path)
    for name in ("clean_shop", "bad_inputs"):
        expected = {path.relative_to(DATA / name): path for path in (DATA / name).rglob("*") if path.is_file()}
        generated = {path.relative_to(tmp_path / name): path for path in (tmp_path / name).rglob("*") if path.is_file()}
        assert sorted(generated) == sorted(expected)
        changed = [str(key) for key, path in generated.items() if path.read_bytes() != expected[key].read_bytes()]
        assert changed == [], "rerun tests/data/make_bad_inputs.py and commit its output"


def test_clean_shop_passes_every_check(last_good):
    report = json.loads((last_good.parent.parent / validate.VALIDATION_REPORT).read_text())
    assert report["failed"] == []
    checks = {result["check"] for result in report["checks"]}
    assert {"images.decodes", "images.size", "interactions.known_items"} <= checks
    assert (last_good / "last_good.json").is_file()


@pytest.mark.parametrize("case", CASES)
def test_bad_input_rejected(case, tmp_path, monkeypatch, last_good):
    spec = yaml.safe_load((CASES_DIR / case / "case.yaml").read_text(encoding="utf-8"))
    monkeypatch.setenv("SHOPREC_WORKSPACE", str(tmp_path))
    prepare_workspace(tmp_path, CASES_DIR / case, spec.get("params", {}))
    seed_downstream(tmp_path)
    if spec.get("baseline"):
        shutil.copytree(last_good, tmp_path / QUALITY_DIR)
    before = digest(tmp_path)

    if spec["stage"] == "ingest":
        with pytest.raises(DataError, match=spec["match"]):
            run_ingest(tmp_path)
        assert not (tmp_path / config.INGESTED_DIR).exists()
    else:
        run_ingest(tmp_path)
        with pytest.raises(DataError, match=rf"block check\(s\) failed: .*{re.escape(spec['check'])}"):
            run_validate(tmp_path)
        report = json.loads((tmp_path / validate.VALIDATION_REPORT).read_text())
        assert spec["check"] in report["block_failures"]
        assert report["passed"] is False
        quarantined = tmp_path / report["quarantine"]
        assert (quarantined / "interactions.parquet").is_file()
        assert (quarantined / "validation.json").is_file()

    assert digest(tmp_path) == before
