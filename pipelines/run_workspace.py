"""Claim the workspace for one scheduled run and apply that run's params.

Scheduled runs share one workspace (its params.yaml, dvc.lock and cache), so
only one run may use it at a time. `claim` records the owning run in
`.dvc/tmp/shoprec-run/owner.json`, created exclusively, and writes the run's
param overrides into params.yaml after keeping a copy of the file;
`release` puts the copy back and removes the claim. The overrides therefore
apply to that run only, while `dvc.lock` and the model card record the
values the run used.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipelines import config
from pipelines.errors import ConfigError, ShoprecError

log = logging.getLogger(__name__)

RUN_DIR = Path(".dvc/tmp/shoprec-run")
OWNER_FILE = RUN_DIR / "owner.json"
PARAMS_BACKUP = RUN_DIR / "params.yaml"


class WorkspaceBusy(ShoprecError):
    """Another run has claimed the workspace, so a retry later can succeed."""


@dataclass(frozen=True)
class FormField:
    """A field of a manual run's trigger form that overrides one params.yaml key.

    A field left at its default keeps the value in params.yaml. A stage that
    wants a switch in the form appends a FormField to FORM_FIELDS.
    """

    name: str
    key: str
    title: str
    description: str
    schema: dict[str, Any]
    default: Any = None


FORM_FIELDS: list[FormField] = [
    FormField("dataset", "ingest.dataset", "Dataset",
              "movielens-100k (built in) or files (the CSV or Parquet files named in ingest.files). "
              "Empty keeps ingest.dataset from params.yaml.",
              {"type": ["null", "string"], "enum": [None, "movielens-100k", "files"]}),
    FormField("epochs", "train.epochs", "Training epochs",
              "Maximum number of training epochs. Empty keeps train.epochs from params.yaml.",
              {"type": ["null", "integer"], "minimum": 1}),
    FormField("num_workers", "train.num_workers", "Ray workers",
              "Number of Ray Train workers (data-parallel processes). Empty keeps train.num_workers.",
              {"type": ["null", "integer"], "minimum": 1}),
    FormField("force_promote", "promote.force", "Force promotion",
              "Promote the new model even when the gate failed; the model card records it as forced. "
              "Off keeps promote.force from params.yaml.",
              {"type": "boolean"}, default=False),
]
# Free-form overrides, for any params.yaml key without its own field.
OVERRIDES_FIELD = FormField(
    "overrides", "", "Other params",
    'Any params.yaml keys for this run only, as {"section.key": value}, for example '
    '{"train.learning_rate": 0.003, "ingest.files.interactions": "exports/log.csv"}.',
    {"type": "object"}, default={})


def overrides_from_form(form: dict[str, Any], fields: list[FormField] = FORM_FIELDS) -> dict[str, Any]:
    """Turn the values of a trigger form into {"section.key": value} overrides.

    Free-form overrides come first, so a field of its own wins over the same key given there.
    """
    extra = form.get(OVERRIDES_FIELD.name) or {}
    if not isinstance(extra, dict):
        raise ConfigError(f"form field '{OVERRIDES_FIELD.name}': expected an object of "
                          f'{{"section.key": value}}, got {type(extra).__name__}')
    overrides = dict(extra)
    for field in fields:
        value = form.get(field.name, field.default)
        if value != field.default:
            overrides[field.key] = value
    return overrides


def check_overrides(params: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Reject an override whose dotted key does not exist in params.yaml, naming the key."""
    for dotted in overrides:
        target: Any = params
        walked: list[str] = []
        for part in dotted.split("."):
            if not isinstance(target, dict) or part not in target:
                known = ", ".join(sorted(target)) if isinstance(target, dict) else "none: it is a value"
                where = ".".join(walked) or "the top level"
                raise ConfigError(f"params.yaml: no key '{dotted}' ('{part}' not found under {where}; "
                                  f"known keys there: {known})")
            target = target[part]
            walked.append(part)
        if isinstance(target, dict):
            raise ConfigError(f"params.yaml: '{dotted}' is a section; override its keys one by one")


def apply_overrides(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of `params` with each {"section.key": value} override set."""
    check_overrides(params, overrides)
    result = copy.deepcopy(params)
    for dotted, value in overrides.items():
        *parents, key = dotted.split(".")
        target = result
        for part in parents:
            target = target[part]
        target[key] = value
    return result


def read_owner(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / OWNER_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def claim(root: Path, owner: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Claim the workspace for run `owner` and write its overrides into params.yaml.

    Raises WorkspaceBusy when another run holds the claim. The same owner may
    claim again (a retried task), which starts from the kept params.yaml.
    """
    params_path = root / config.PARAMS_FILE
    params = config.load_params(params_path)
    check_overrides(params, overrides)
    record = {"owner": owner, "claimed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "overrides": overrides}
    if not _create_owner(root, record):
        holder = read_owner(root) or {}
        if holder.get("owner") != owner:
            raise WorkspaceBusy(
                f"workspace {root} is in use by run '{holder.get('owner')}' since {holder.get('claimed_at')}; "
                f"if that run is no longer active, delete {root / OWNER_FILE} and retry")
        if (root / PARAMS_BACKUP).is_file():
            params = config.load_params(root / PARAMS_BACKUP)
    if overrides:
        if not (root / PARAMS_BACKUP).is_file():
            shutil.copyfile(params_path, root / PARAMS_BACKUP)
        _write_yaml(apply_overrides(params, overrides), params_path)
        for dotted, value in overrides.items():
            log.info("params.yaml for this run: %s = %r", dotted, value)
    return record


def release(root: Path, owner: str) -> bool:
    """Restore params.yaml and give up the claim of run `owner`; return False when it held none."""
    holder = read_owner(root)
    if holder is None or holder.get("owner") != owner:
        log.warning("run '%s' holds no claim on %s (holder: %s); nothing to release", owner, root,
                    holder.get("owner") if holder else "none")
        return False
    backup = root / PARAMS_BACKUP
    if backup.is_file():
        os.replace(backup, root / config.PARAMS_FILE)
        log.info("params.yaml restored to its state before run '%s'", owner)
    (root / OWNER_FILE).unlink()
    return True


def _create_owner(root: Path, record: dict[str, Any]) -> bool:
    path = root / OWNER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump(record, stream, indent=2)
    return True


def _write_yaml(data: dict[str, Any], target: Path) -> None:
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    os.replace(temporary, target)
