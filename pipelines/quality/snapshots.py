"""The last good snapshot that new data is compared with, and the quarantine of rejected data.

Layout under `data/quality/` (kept out of dvc.yaml's outs, so DVC never
deletes it before a run):

    last_good.json             pointer: {"snapshot": "<run id>", ...}
    snapshots/<run id>/        profile.json, users.parquet (id), items.parquet (id, count)
    quarantine/<run id>/       the rejected tables, validation.json, summary.txt, data_docs/

Only a run without block failures writes a snapshot, and it does so after
every check has passed: the snapshot folder is complete before the pointer,
which is replaced atomically, names it. A blocked run or a crash at any
point leaves the pointer on the previous good snapshot.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.errors import DataError
from pipelines.io import write_json
from pipelines.quality.drift import Profile

log = logging.getLogger(__name__)

QUALITY_DIR = Path("data/quality")
POINTER = "last_good.json"
# Snapshots kept besides the last good one, so that an engineer can look one run back.
SNAPSHOTS_KEPT = 2
# Profile fields stored as Parquet columns rather than in profile.json: file -> {column: field}.
TABLE_FIELDS = {"users.parquet": {"id": "user_ids"}, "items.parquet": {"id": "item_ids", "count": "item_counts"}}


def safe_run_id(text: str) -> str:
    """Reduce a run id to characters that are safe in a folder name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return cleaned or "run"


class SnapshotStore:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.pointer = self.folder / POINTER
        self.snapshots = self.folder / "snapshots"
        self.quarantine_dir = self.folder / "quarantine"

    # ------------------------------------------------------------ last good snapshot

    def load_last_good(self) -> tuple[str, Profile] | None:
        """Return the last good snapshot's name and profile, or None before the first good run."""
        if not self.pointer.is_file():
            return None
        name = json.loads(self.pointer.read_text(encoding="utf-8"))["snapshot"]
        folder = self.snapshots / name
        try:
            fields = json.loads((folder / "profile.json").read_text(encoding="utf-8"))
            for file, columns in TABLE_FIELDS.items():
                table = pd.read_parquet(folder / file)
                for column, field_name in columns.items():
                    fields[field_name] = table[column].to_numpy(dtype=object if column == "id" else np.int64)
            profile = Profile(**fields)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DataError(
                f"{folder}: last good snapshot named by {self.pointer} is missing or damaged ({error}); "
                f"restore it, or delete {self.pointer} to start again without snapshot checks"
            ) from error
        return name, profile

    def save_last_good(self, run_id: str, profile: Profile, meta: dict[str, Any]) -> str:
        """Write the profile as a new snapshot, then point `last_good.json` at it."""
        self.snapshots.mkdir(parents=True, exist_ok=True)
        name = self.free_name(self.snapshots, run_id)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.snapshots))
        try:
            in_tables = {field_name for columns in TABLE_FIELDS.values() for field_name in columns.values()}
            fields = {key: value for key, value in vars(profile).items() if key not in in_tables}
            (staging / "profile.json").write_text(json.dumps(fields, indent=2) + "\n", encoding="utf-8")
            for file, columns in TABLE_FIELDS.items():
                table = pd.DataFrame({column: getattr(profile, field_name) for column, field_name in columns.items()})
                table["id"] = table["id"].astype("string")
                table.to_parquet(staging / file, index=False)
            os.replace(staging, self.snapshots / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        write_json({"snapshot": name, **meta}, self.pointer)
        self._prune(self.snapshots, SNAPSHOTS_KEPT + 1, keep=name)
        return name

    # ------------------------------------------------------------ quarantine

    def quarantine(self, name: str, tables_dir: Path, copies: dict[str, Path], texts: dict[str, str],
                   keep: int) -> Path:
        """Keep the rejected tables and the run's reports in `quarantine/<name>/`.

        `copies` maps a relative path in the quarantine folder to a file or folder
        to copy there, `texts` to text to write there. Only the newest `keep`
        quarantined runs are kept.
        """
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        target = self.quarantine_dir / name
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.quarantine_dir))
        try:
            for table in sorted(Path(tables_dir).glob("*.parquet")):
                shutil.copy2(table, staging / table.name)
            for relative, source in copies.items():
                destination = staging / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                if Path(source).is_dir():
                    shutil.copytree(source, destination)
                elif Path(source).is_file():
                    shutil.copy2(source, destination)
            for relative, text in texts.items():
                (staging / relative).write_text(text, encoding="utf-8")
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._prune(self.quarantine_dir, keep, keep=name)
        return target

    # ------------------------------------------------------------ helpers

    @staticmethod
    def free_name(parent: Path, run_id: str) -> str:
        """Return `run_id`, made safe for a folder name and unique within `parent`."""
        name = safe_run_id(run_id)
        candidate, number = name, 2
        while (parent / candidate).exists():
            candidate, number = f"{name}-{number}", number + 1
        return candidate

    @staticmethod
    def _prune(parent: Path, count: int, keep: str) -> None:
        """Delete all but the `count` most recently written folders of `parent`, never `keep`."""
        folders = [path for path in parent.iterdir() if path.is_dir() and not path.name.startswith(".")]
        folders.sort(key=lambda path: path.stat().st_mtime_ns, reverse=True)
        for path in folders[count:]:
            if path.name != keep:
                log.info("deleting old %s", path)
                shutil.rmtree(path, ignore_errors=True)
