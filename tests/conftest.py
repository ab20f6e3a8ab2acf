"""Shared fixtures: the real MovieLens-100K tables and throw-away workspaces."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from pipelines import config, ingest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def movielens_tables():
    """The three contract tables of MovieLens-100K, read once per test session."""
    return ingest.ingest_movielens(ingest.movielens_folder())


@pytest.fixture()
def workspace(tmp_path, monkeypatch):
    """An empty workspace with the repository's params.yaml, used as SHOPREC_WORKSPACE."""
    shutil.copyfile(REPO / config.PARAMS_FILE, tmp_path / config.PARAMS_FILE)
    monkeypatch.setenv("SHOPREC_WORKSPACE", str(tmp_path))
    return tmp_path


def update_params(root: Path, changes: dict) -> None:
    """Apply {"section.key": value} changes to the params.yaml in `root`."""
    path = root / config.PARAMS_FILE
    params = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        target = params
        *parents, key = dotted.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))
