"""Ingest stage: read the raw source and write the normalised tables.

Run as `python -m pipelines.ingest` (the DVC stage `ingest`). Reads the
`ingest` section of params.yaml and writes `data/ingested/interactions.parquet`,
`items.parquet` and `users.parquet` in the shape that docs/data-contract.md
describes. The `fashion-shop` dataset also writes one PNG file per product
under `data/ingested/images/`. Any unreadable source fails the stage before a
file is written.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import config
from pipelines.errors import ConfigError, DataError
from pipelines.io import staged_folder, write_parquet_tables

log = logging.getLogger(__name__)

# Contract columns of each table: required first, then optional ones.
REQUIRED_COLUMNS = {
    "interactions": ("user_id", "item_id", "timestamp"),
    "items": ("item_id",),
    "users": ("user_id",),
}
OPTIONAL_COLUMNS = {
    "interactions": ("rating",),
    "items": ("title", "categories", "release_year", "image_path"),
    "users": (),
}
ID_COLUMNS = {"interactions": ("user_id", "item_id"), "items": ("item_id",), "users": ("user_id",)}
CATEGORY_SEPARATOR = "|"
DATASETS = ("movielens-100k", "fashion-shop", "files")
# Product images of the fashion-shop dataset, one `<item_id>.png` each.
IMAGES_DIR = config.INGESTED_DIR / "images"


# ---------------------------------------------------------------- reading files


def read_source_file(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file with every value as text (CSV) or as stored (Parquet)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        frame = _read_parquet(path)
    elif suffix in (".csv", ".tsv", ".txt"):
        frame = _read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    else:
        raise DataError(f"{path}: unsupported file type '{suffix}', expected .csv, .tsv or .parquet")
    if frame.empty:
        raise DataError(f"{path}: file has a header but no rows")
    return frame


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pq.read_table(path).to_pandas()
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path}: cannot be read as Parquet ({error})") from error


def _read_csv(path: Path, sep: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}: not valid UTF-8 at byte {error.start}; re-export the file as UTF-8"
        ) from error
    except pd.errors.EmptyDataError as error:
        raise DataError(f"{path}: file is empty") from error
    except pd.errors.ParserError as error:
        raise DataError(f"{path}: cannot be read as CSV ({error})") from error


def read_atomic_file(path: Path) -> pd.DataFrame:
    """Read a RecBole atomic file: tab-separated, header cells are `name:type`."""
    frame = _read_csv(path, sep="\t")
    frame.columns = [column.split(":", 1)[0] for column in frame.columns]
    if frame.empty:
        raise DataError(f"{path}: file has a header but no rows")
    return frame


# ---------------------------------------------------------------- normalising


def rename_columns(frame: pd.DataFrame, mapping: dict[str, str], table: str, path: Path) -> pd.DataFrame:
    """Rename source columns to contract names; every required column must be mapped and present."""
    missing_required = [
        (contract, mapping.get(contract, contract))
        for contract in REQUIRED_COLUMNS[table]
        if mapping.get(contract, contract) not in frame.columns
    ]
    if missing_required:
        contract, source = missing_required[0]
        raise DataError(
            f"{path}: column '{source}' (contract column '{table}.{contract}') not found; "
            f"found columns: {', '.join(map(str, frame.columns))}"
        )
    renames = {}
    for contract in REQUIRED_COLUMNS[table] + OPTIONAL_COLUMNS[table]:
        source = mapping.get(contract, contract)
        if source in frame.columns:
            renames[source] = contract
    return frame.rename(columns=renames)


def normalise_ids(frame: pd.DataFrame, table: str, path: Path) -> pd.DataFrame:
    """Turn id columns into non-null strings; integral floats such as 12.0 become '12'."""
    for column in ID_COLUMNS[table]:
        values = frame[column]
        null_rows = np.flatnonzero(values.isna().to_numpy())
        if len(null_rows):
            raise DataError(
                f"{path}: column '{column}' has {len(null_rows)} null id(s); first at row {null_rows[0] + 1}"
            )
        if pd.api.types.is_float_dtype(values):
            fractional = np.flatnonzero((values % 1 != 0).to_numpy())
            if len(fractional):
                row = fractional[0]
                raise DataError(
                    f"{path}: column '{column}' row {row + 1}: id {values.iloc[row].item()!r} is not an integer or text"
                )
            values = values.astype("int64")
        text = values.astype(str).str.strip()
        blank_rows = np.flatnonzero((text == "").to_numpy())
        if len(blank_rows):
            raise DataError(f"{path}: column '{column}' row {blank_rows[0] + 1}: id is blank")
        frame[column] = text.astype("string")
    return frame


def parse_timestamps(values: pd.Series, path: Path, unit: str = "s") -> pd.Series:
    """Convert a timestamp column to Unix seconds (int64).

    Numbers are read as Unix time in `unit` (s or ms); text as ISO 8601 dates.
    """
    null_rows = np.flatnonzero(values.isna().to_numpy())
    if len(null_rows):
        raise DataError(f"{path}: column 'timestamp' has {len(null_rows)} null value(s); first at row {null_rows[0] + 1}")
    divisor = {"s": 1, "ms": 1000}.get(unit)
    if divisor is None:
        raise ConfigError(f"params.yaml: ingest.timestamp_unit is '{unit}', expected one of: s, ms")
    numeric = pd.to_numeric(values, errors="coerce")
    seconds = (numeric // divisor).astype("Int64")
    text_rows = numeric.isna()
    if text_rows.any():
        parsed = pd.to_datetime(values[text_rows].astype(str), errors="coerce", utc=True, format="ISO8601")
        bad = parsed.isna()
        if bad.any():
            row = int(np.flatnonzero(text_rows.to_numpy())[np.flatnonzero(bad.to_numpy())[0]])
            raise DataError(
                f"{path}: column 'timestamp' row {row + 1}: cannot parse timestamp {values.iloc[row]!r}; "
                "expected Unix time or an ISO 8601 date"
            )
        seconds[text_rows] = ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy()
    return seconds.astype("int64")


def parse_numbers(values: pd.Series, column: str, path: Path, dtype: str) -> pd.Series:
    """Convert an optional numeric column, naming the first value that is not a number."""
    numeric = pd.to_numeric(values, errors="coerce")
    bad_rows = np.flatnonzero((numeric.isna() & values.notna()).to_numpy())
    if len(bad_rows):
        row = bad_rows[0]
        raise DataError(f"{path}: column '{column}' row {row + 1}: {values.iloc[row]!r} is not a number")
    return numeric.astype(dtype)


def normalise_interactions(frame: pd.DataFrame, path: Path, timestamp_unit: str = "s") -> pd.DataFrame:
    frame = normalise_ids(frame, "interactions", path)
    frame["timestamp"] = parse_timestamps(frame["timestamp"], path, timestamp_unit)
    if "rating" in frame.columns:
        frame["rating"] = parse_numbers(frame["rating"], "rating", path, "float64")
    else:
        frame["rating"] = 1.0
    return frame[["user_id", "item_id", "timestamp", "rating"]].reset_index(drop=True)


def normalise_items(frame: pd.DataFrame, path: Path, separator: str = CATEGORY_SEPARATOR) -> pd.DataFrame:
    frame = normalise_ids(frame, "items", path)
    if "title" not in frame.columns:
        frame["title"] = frame["item_id"]
    frame["title"] = frame["title"].astype("string")
    if "categories" in frame.columns:
        frame["categories"] = frame["categories"].astype("string").map(
            lambda text: _join_categories(text, separator), na_action="ignore"
        )
    else:
        frame["categories"] = pd.NA
    frame["categories"] = frame["categories"].astype("string")
    if "release_year" in frame.columns:
        frame["release_year"] = parse_numbers(frame["release_year"], "release_year", path, "Int64")
    else:
        frame["release_year"] = pd.array([pd.NA] * len(frame), dtype="Int64")
    if "image_path" not in frame.columns:
        frame["image_path"] = pd.NA
    frame["image_path"] = frame["image_path"].astype("string")
    return frame[["item_id", "title", "categories", "release_year", "image_path"]].reset_index(drop=True)


def _join_categories(text: str, separator: str) -> str:
    parts = [part.strip() for part in str(text).split(separator)]
    return CATEGORY_SEPARATOR.join(part for part in parts if part)


def normalise_users(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    frame = normalise_ids(frame, "users", path)
    features = [column for column in frame.columns if column != "user_id"]
    for column in features:
        frame[column] = frame[column].astype("string")
    return frame[["user_id", *features]].reset_index(drop=True)


# ---------------------------------------------------------------- sources


def movielens_folder() -> Path:
    """Locate MovieLens-100K inside the installed recbole wheel without importing recbole.

    `find_spec` reads the package's location from the import system; the
    package's own code never runs.
    """
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "MovieLens-100K not found: the recbole wheel is not installed; "
            "run `pip install --no-deps recbole==1.2.1` (make run does this)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"


def ingest_movielens(folder: Path) -> dict[str, pd.DataFrame]:
    """Read the three MovieLens-100K atomic files into contract tables."""
    paths = {table: folder / f"ml-100k.{suffix}" for table, suffix in
             (("interactions", "inter"), ("items", "item"), ("users", "user"))}
    for path in paths.values():
        if not path.is_file():
            raise DataError(f"{path}: file not found")
    interactions = rename_columns(read_atomic_file(paths["interactions"]), {}, "interactions", paths["interactions"])
    items = read_atomic_file(paths["items"]).rename(columns={"movie_title": "title", "class": "categories"})
    items["release_year"] = _repair_movielens_years(items)
    items = rename_columns(items, {}, "items", paths["items"])
    users = rename_columns(read_atomic_file(paths["users"]), {}, "users", paths["users"])
    return {
        "interactions": normalise_interactions(interactions, paths["interactions"]),
        "items": normalise_items(items, paths["items"], separator=" "),
        "users": normalise_users(users, paths["users"]),
    }


def _repair_movielens_years(items: pd.DataFrame) -> pd.Series:
    """Return release years with the wheel's two parsing slips undone.

    RecBole's conversion left 'unkonwn' for one movie and, for a title that
    ends in '(V) (1995)', put 'V' in the year and the year in the title.
    Such years are taken from the title when it has '(YYYY)', else left null.
    """
    years = items["release_year"]
    valid = years.str.fullmatch(r"\d{4}").fillna(False).astype(bool)
    from_title = items["title"].str.extract(r"\((\d{4})\)\s*$", expand=False)
    repaired = years.where(valid, from_title)
    if (~valid).any():
        log.info("MovieLens items: %d release year(s) not in YYYY form, %d recovered from the title",
                 int((~valid).sum()), int(repaired[~valid].notna().sum()))
    return repaired


def ingest_files(files: dict[str, Any], columns: dict[str, dict[str, str]], options: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """Read the user's own CSV or Parquet files, renaming columns by the mapping in params."""
    workspace = config.workspace()
    tables = {}
    for table in config.TABLES:
        if table not in files or not files[table]:
            if table == "interactions":
                raise ConfigError("params.yaml: ingest.files.interactions is required when ingest.dataset is 'files'")
            continue
        path = (workspace / files[table]).resolve()
        frame = rename_columns(read_source_file(path), (columns or {}).get(table) or {}, table, path)
        if table == "interactions":
            tables[table] = normalise_interactions(frame, path, options.get("timestamp_unit", "s"))
        elif table == "items":
            tables[table] = normalise_items(frame, path, options.get("category_separator", CATEGORY_SEPARATOR))
        else:
            tables[table] = normalise_users(frame, path)
    interactions = tables["interactions"]
    if "items" not in tables:
        tables["items"] = normalise_items(pd.DataFrame({"item_id": interactions["item_id"].unique()}), Path("<derived>"))
    if "users" not in tables:
        tables["users"] = normalise_users(pd.DataFrame({"user_id": interactions["user_id"].unique()}), Path("<derived>"))
    return tables


def ingest_fashion_shop(params: dict[str, Any]) -> tuple[dict[str, pd.DataFrame], dict[str, np.ndarray]]:
    """Build the fashion-shop tables; each item's `image_path` points into IMAGES_DIR."""
    from pipelines import fashion

    raw, images = fashion.build_fashion_shop(params.get("fashion_shop") or {})
    source = Path("<fashion-shop>")
    raw["items"]["image_path"] = [str(IMAGES_DIR / f"{item_id}.png") for item_id in raw["items"]["item_id"]]
    tables = {
        "interactions": normalise_interactions(raw["interactions"], source),
        "items": normalise_items(raw["items"], source),
        "users": normalise_users(raw["users"], source),
    }
    return tables, images


def ingest_with_images(params: dict[str, Any]) -> tuple[dict[str, pd.DataFrame], dict[str, np.ndarray]]:
    """Read the source that `ingest.dataset` names; return the three contract tables and images to write.

    Only the fashion-shop dataset has images to write (item id -> pixels); the
    files source keeps whatever `image_path` the user's items table gives.
    """
    dataset = params.get("dataset", "movielens-100k")
    if dataset == "movielens-100k":
        return ingest_movielens(movielens_folder()), {}
    if dataset == "fashion-shop":
        return ingest_fashion_shop(params)
    if dataset == "files":
        return ingest_files(params.get("files") or {}, params.get("columns") or {}, params), {}
    raise ConfigError(f"params.yaml: ingest.dataset is '{dataset}', expected one of: {', '.join(DATASETS)}")


def ingest(params: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """Read the source that `ingest.dataset` names and return the three contract tables."""
    return ingest_with_images(params)[0]


def write_outputs(tables: dict[str, pd.DataFrame], images: dict[str, np.ndarray], root: Path) -> None:
    """Write the tables and the PNG images; a failure leaves the previous outputs as they were."""
    from PIL import Image

    if not images:
        write_parquet_tables(tables, root / config.INGESTED_DIR)
        shutil.rmtree(root / IMAGES_DIR, ignore_errors=True)  # images of an earlier dataset
        return
    with staged_folder(root / IMAGES_DIR) as folder:
        for item_id, pixels in images.items():
            Image.fromarray(pixels).save(folder / f"{item_id}.png", format="PNG")
        write_parquet_tables(tables, root / config.INGESTED_DIR)


def main() -> None:
    from pipelines.cli import run_stage

    def stage() -> None:
        params = config.section(config.load_params(), "ingest")
        tables, images = ingest_with_images(params)
        write_outputs(tables, images, config.workspace())
        for name, frame in tables.items():
            log.info("wrote %s: %d rows", config.INGESTED_DIR / f"{name}.parquet", len(frame))
        if images:
            log.info("wrote %d product images to %s", len(images), IMAGES_DIR)

    run_stage("ingest", stage)


if __name__ == "__main__":
    main()
