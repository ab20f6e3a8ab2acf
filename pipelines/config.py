"""Paths of the workspace and access to params.yaml."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from pipelines.errors import ConfigError

PARAMS_FILE = "params.yaml"

# Stage outputs, relative to the workspace root; dvc.yaml names the same paths.
INGESTED_DIR = Path("data/ingested")
SPLIT_DIR = Path("data/split")
CANDIDATE_DIR = Path("models/candidate")
REGISTRY_DIR = Path("models/registry")
PRODUCTION_POINTER = Path("models/production.json")
REPORTS_DIR = Path("reports")
VALIDATION_REPORT = REPORTS_DIR / "validation.json"
METRICS_FILE = Path("metrics.json")
GATE_FILE = Path("gate.json")

TABLES = ("interactions", "items", "users")
SPLITS = ("train", "valid", "test")


def workspace() -> Path:
    """Return the workspace root: SHOPREC_WORKSPACE, or the current directory."""
    return Path(os.environ.get("SHOPREC_WORKSPACE", ".")).resolve()


def load_params(path: Path | None = None) -> dict[str, Any]:
    """Read params.yaml from the workspace (or `path`) as a dict."""
    path = path or workspace() / PARAMS_FILE
    try:
        with open(path, encoding="utf-8") as handle:
            params = yaml.safe_load(handle)
    except FileNotFoundError as error:
        raise ConfigError(f"{path}: parameter file not found") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from error
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping of stage sections, got {type(params).__name__}")
    return params


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    """Return the params section of one stage, failing clearly when it is missing."""
    value = params.get(name)
    if not isinstance(value, dict):
        raise ConfigError(f"params.yaml: section '{name}' is missing or not a mapping")
    return value
