"""The versioned model registry under models/registry/, its production pointer and promotion history.

A version is a folder `vNNNN` holding `model.pt`, the serving tables, the
ONNX export and evaluation report when there are any, and `model_card.json`.
The card lists the SHA-256 of every other file, so a folder edited by hand
is detected before it is promoted, rolled back to, or compared against.

`models/production.json` names the production version and contains the whole
promotion history (when, who, action, from, to, reason). Both change in one
atomic rename, so the history never misses a change of the pointer. Versions
are assembled in `models/.staging/` and renamed into the registry, so a crash
at any step leaves either the old or the new production model, and never a
version folder with part of its files. Changes take an exclusive lock on
`models/.registry.lock`, so a manual rollback cannot interleave with the
promote stage.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from pipelines import config
from pipelines.errors import RegistryError

VERSION_PATTERN = re.compile(r"^v(\d{4,})$")
CARD_FILE = "model_card.json"
MODEL_FILE = "model.pt"
# The compressed model the compress stage chose. A version that has it serves it.
COMPRESSED_FILE = "compressed.pt"
STAGING_DIR = Path("models/.staging")
LOCK_FILE = Path("models/.registry.lock")


def registry_dir(root: Path) -> Path:
    return root / config.REGISTRY_DIR


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def actor() -> str:
    """Who or what makes a change: SHOPREC_TRIGGERED_BY, the Airflow DAG, or the user name."""
    if os.environ.get("SHOPREC_TRIGGERED_BY"):
        return os.environ["SHOPREC_TRIGGERED_BY"]
    if os.environ.get("AIRFLOW_CTX_DAG_ID"):
        return f"airflow:{os.environ['AIRFLOW_CTX_DAG_ID']}"
    return getpass.getuser()


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold the registry's exclusive lock (blocking) while changing versions or the pointer."""
    path = root / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_json_durably(data: Any, target: Path) -> None:
    """Write JSON to a temporary file, fsync it, rename it over `target` and fsync the folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; serving may run as another user
        os.replace(tmp_name, target)
        fsync_dir(target.parent)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def read_json_file(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RegistryError(f"{path}: cannot read the {what} ({type(error).__name__}: {error})") from error


# ---------------------------------------------------------------- versions


def list_versions(root: Path) -> list[str]:
    """Registered versions, oldest first."""
    folder = registry_dir(root)
    if not folder.is_dir():
        return []
    versions = [path.name for path in folder.iterdir() if path.is_dir() and VERSION_PATTERN.match(path.name)]
    return sorted(versions, key=lambda name: int(name[1:]))


def normalize_version(text: str) -> str:
    """Accept `v0003`, `v3` or `3` for version v0003; other text is returned unchanged."""
    match = re.fullmatch(r"v?(\d+)", text.strip())
    return f"v{int(match.group(1)):04d}" if match else text


def next_version(root: Path) -> str:
    versions = list_versions(root)
    number = int(versions[-1][1:]) + 1 if versions else 1
    return f"v{number:04d}"


def version_folder(root: Path, version: str) -> Path:
    """The folder of an existing version; an unknown version is a RegistryError listing the known ones."""
    folder = registry_dir(root) / version
    if not VERSION_PATTERN.match(version) or not folder.is_dir():
        known = ", ".join(list_versions(root)) or "none"
        raise RegistryError(f"model version '{version}' not found in {registry_dir(root)} (known: {known})")
    return folder


def add_version(root: Path, files: dict[str, Path], card: dict[str, Any]) -> str:
    """Copy `files` (name in the version -> source path) and the card into a new version; call under `locked`."""
    staging_root = root / STAGING_DIR
    shutil.rmtree(staging_root, ignore_errors=True)  # leftovers of a crashed promotion; the lock is held
    staging_root.mkdir(parents=True)
    registry_dir(root).mkdir(parents=True, exist_ok=True)
    version = next_version(root)
    staging = staging_root / version
    staging.mkdir()
    checksums = {}
    for name, source in files.items():
        shutil.copyfile(source, staging / name)
        checksums[name] = {"sha256": file_digest(staging / name), "bytes": (staging / name).stat().st_size}
    write_json_durably({**card, "version": version, "files": checksums}, staging / CARD_FILE)
    os.rename(staging, registry_dir(root) / version)
    fsync_dir(registry_dir(root))
    return version


def read_card(root: Path, version: str) -> dict[str, Any]:
    path = version_folder(root, version) / CARD_FILE
    if not path.is_file():
        raise RegistryError(f"{path}: model card missing; the version folder is incomplete or was edited by hand")
    card = read_json_file(path, "model card")
    if not isinstance(card, dict) or not isinstance(card.get("files"), dict):
        raise RegistryError(f"{path}: model card has no file checksums; the version folder was edited by hand")
    return card


def version_problems(root: Path, version: str) -> list[str]:
    """Differences between a version folder and the checksums in its card (empty when intact)."""
    folder = version_folder(root, version)
    card = read_card(root, version)
    problems = []
    for name, expected in sorted(card["files"].items()):
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif file_digest(path) != expected["sha256"]:
            problems.append(f"{name} differs from its checksum in the model card")
    extra = sorted(path.name for path in folder.iterdir() if path.name not in card["files"] and path.name != CARD_FILE)
    problems += [f"{name} is not listed in the model card" for name in extra]
    return problems


def verify_version(root: Path, version: str) -> Path:
    """Return the folder of `version` after checking every file against the card's checksums."""
    problems = version_problems(root, version)
    if problems:
        raise RegistryError(f"{registry_dir(root) / version} was changed after registration: {'; '.join(problems)}. "
                            "Restore it (dvc checkout models/registry, or dvc pull) before using this version")
    return registry_dir(root) / version


def find_version_with_model(root: Path, digest: str) -> str | None:
    """The newest version whose model.pt has this SHA-256, per its card."""
    for version in reversed(list_versions(root)):
        card_path = registry_dir(root) / version / CARD_FILE
        if card_path.is_file():
            card = read_json_file(card_path, "model card")
            if (card.get("files") or {}).get(MODEL_FILE, {}).get("sha256") == digest:
                return version
    return None


# ---------------------------------------------------------------- production pointer


def production(root: Path) -> dict[str, Any] | None:
    """Return the production pointer with its history, or None before the first promotion."""
    path = root / config.PRODUCTION_POINTER
    if not path.is_file():
        return None
    pointer = read_json_file(path, "production pointer")
    if not isinstance(pointer, dict) or not isinstance(pointer.get("version"), str):
        raise RegistryError(f"{path}: production pointer has no version; restore it from the promotion history")
    return pointer


def served_file(folder: Path) -> Path:
    """Return the model file a version serves: its compressed model when it has one, else the trained model."""
    compressed = folder / COMPRESSED_FILE
    return compressed if compressed.is_file() else folder / MODEL_FILE


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


def production_chain(pointer: dict[str, Any] | None) -> list[str]:
    """Versions that were production in turn, newest last, without those rolled back."""
    if pointer is None:
        return []
    history = pointer.get("history")
    if history is None:  # a pointer written before the history was kept
        return [version for version in (pointer.get("previous"), pointer["version"]) if version]
    chain: list[str] = []
    for entry in history:
        if entry["action"] == "rollback" and chain:
            chain.pop()
        else:
            chain.append(entry["to"])
    return chain


def set_production(root: Path, version: str, reason: str, action: str = "promote") -> dict[str, Any]:
    """Point production at `version` and append the change to the history; call under `locked`."""
    verify_version(root, version)
    current = production(root)
    entry = {"at": now(), "by": actor(), "action": action,
             "from": current["version"] if current else None, "to": version, "reason": reason}
    history = list((current or {}).get("history") or [])
    pointer = {"version": version, "previous": entry["from"], "updated_at": entry["at"], "updated_by": entry["by"],
               "reason": reason, "history": [*history, entry]}
    write_json_durably(pointer, root / config.PRODUCTION_POINTER)
    return pointer


def promote_version(root: Path, version: str, reason: str) -> dict[str, Any]:
    """Make an existing, intact version production (manual promotion)."""
    with locked(root):
        current = production(root)
        if current is not None and current["version"] == version:
            raise RegistryError(f"{version} is already production; nothing to promote")
        return set_production(root, version, reason, "promote")


def rollback(root: Path, reason: str) -> dict[str, Any]:
    """Point production back at the version that was production before the current one."""
    with locked(root):
        pointer = production(root)
        if pointer is None:
            raise RegistryError("no production model to roll back: nothing has been promoted yet")
        chain = production_chain(pointer)
        if len(chain) < 2:
            raise RegistryError(f"no previous production version to roll back to: {pointer['version']} is the first "
                                "production model in the promotion history")
        return set_production(root, chain[-2], reason, "rollback")
