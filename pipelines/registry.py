"""The versioned model registry under models/registry/ and its production pointer.

A version is a folder `vNNNN` holding `model.pt`, the serving tables and
`model_card.json`. It is assembled in a hidden temporary folder and renamed
into place, and `models/production.json` is replaced by rename as well, so a
crash at any step leaves either the old or the new production model.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines import config
from pipelines.errors import RegistryError
from pipelines.io import read_json, write_json

VERSION_PATTERN = re.compile(r"^v(\d{4,})$")
CARD_FILE = "model_card.json"


def registry_dir(root: Path) -> Path:
    return root / config.REGISTRY_DIR


def list_versions(root: Path) -> list[str]:
    """Registered versions, oldest first."""
    folder = registry_dir(root)
    if not folder.is_dir():
        return []
    versions = [path.name for path in folder.iterdir() if path.is_dir() and VERSION_PATTERN.match(path.name)]
    return sorted(versions, key=lambda name: int(name[1:]))


def next_version(root: Path) -> str:
    versions = list_versions(root)
    number = int(versions[-1][1:]) + 1 if versions else 1
    return f"v{number:04d}"


def add_version(root: Path, files: dict[str, Path], card: dict[str, Any]) -> str:
    """Copy `files` (name in the version -> source path) and the card into a new version."""
    folder = registry_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    version = next_version(root)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=folder))
    try:
        for name, source in files.items():
            shutil.copyfile(source, staging / name)
        write_json({**card, "version": version}, staging / CARD_FILE)
        os.rename(staging, folder / version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return version


def read_card(root: Path, version: str) -> dict[str, Any]:
    path = registry_dir(root) / version / CARD_FILE
    if not path.is_file():
        known = ", ".join(list_versions(root)) or "none"
        raise RegistryError(f"model version '{version}' not found in {registry_dir(root)} (known: {known})")
    return read_json(path)


def production(root: Path) -> dict[str, Any] | None:
    """Return the production pointer, or None before the first promotion."""
    path = root / config.PRODUCTION_POINTER
    if not path.is_file():
        return None
    return read_json(path)


def production_folder(root: Path) -> Path:
    pointer = production(root)
    if pointer is None:
        raise RegistryError(
            f"no production model: {root / config.PRODUCTION_POINTER} does not exist; "
            "run the pipeline (make run) so that a model passes the gate and is promoted"
        )
    folder = registry_dir(root) / pointer["version"]
    if not folder.is_dir():
        raise RegistryError(f"production pointer names version '{pointer['version']}', but {folder} is missing")
    return folder


def set_production(root: Path, version: str, reason: str) -> dict[str, Any]:
    """Point production at `version` by atomic replace of the pointer file."""
    read_card(root, version)
    previous = production(root)
    pointer = {
        "version": version,
        "previous": previous["version"] if previous else None,
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "reason": reason,
    }
    write_json(pointer, root / config.PRODUCTION_POINTER)
    return pointer
