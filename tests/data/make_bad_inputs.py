"""Generate the clean shop export and the bad-input corpus used by the validate tests.

Run from the repository root:

    python tests/data/make_bad_inputs.py [--output FOLDER]

Writes `tests/data/clean_shop/` (a small, seeded, synthetic shop export: one
week of events of 40 customers on 30 products, with product images) and
`tests/data/bad_inputs/<case>/`, one folder per way an export can be broken.
Each case folder contains the source files ingest reads and a `case.yaml` naming
the stage that must reject it and the check (or, for ingest, the message).
No value comes from real people. The output depends only on the seed, so
rerunning the script reproduces the committed files byte for byte with the
same pandas, pyarrow and Pillow versions.
"""

from __future__ import annotations

import argparse
import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

HERE = Path(__file__).resolve().parent
SEED = 20260301
DAYS = pd.date_range("2026-03-01", periods=7, freq="D", tz="UTC")
EVENTS_PER_DAY = 60
CATEGORIES = ("Shirts", "Shoes", "Bags", "Hats", "Socks")
# Workspace path of the files of a case; the test copies a case folder there.
RAW = "data/raw"
# Params every case runs with, as {dotted key: value}; a case's own params come on top.
BASE_PARAMS = {
    "ingest.dataset": "files",
    "ingest.columns": {
        "interactions": {"user_id": "customer", "item_id": "sku", "timestamp": "event_time", "rating": "stars"},
        "items": {"item_id": "sku", "title": "name", "categories": "category", "release_year": "launched",
                  "image_path": "image"},
        "users": {"user_id": "customer"},
    },
    "ingest.timestamp_unit": "s",
    "validate.run_date": "2026-03-08",
}


# ---------------------------------------------------------------- the clean shop


def clean_shop() -> dict[str, pd.DataFrame]:
    """Return the clean export: interactions, items (with image names) and users, as source columns."""
    rng = np.random.default_rng(SEED)
    users = pd.DataFrame({"customer": [f"c-{n:02d}" for n in range(1, 41)],
                          "segment": rng.choice(["regular", "new", "wholesale"], size=40)})
    items = pd.DataFrame({
        "sku": [f"sku-{n:02d}" for n in range(1, 31)],
        "name": [f"Product {n:02d}" for n in range(1, 31)],
        "category": [_categories(rng) for _ in range(30)],
        "launched": rng.integers(2019, 2026, size=30),
        "image": [f"{RAW}/images/sku-{n:02d}.png" for n in range(1, 31)],
    })
    return {"interactions": _events(rng, users["customer"], items["sku"]), "items": items, "users": users}


def _categories(rng: np.random.Generator) -> str:
    count = 1 if rng.random() < 0.7 else 2
    return "|".join(sorted(rng.choice(CATEGORIES, size=count, replace=False)))


def _events(rng: np.random.Generator, customers: pd.Series, skus: pd.Series) -> pd.DataFrame:
    """Draw a week of events: a few busy customers, a few best-selling products, mostly good ratings."""
    customer_weights = 1 / np.arange(1, len(customers) + 1) ** 0.8
    sku_weights = 1 / np.arange(1, len(skus) + 1) ** 1.0
    rows = []
    for day in DAYS:
        start = int(day.timestamp())
        seconds = np.sort(rng.choice(86_400, size=EVENTS_PER_DAY, replace=False))
        for second in seconds:
            rows.append((rng.choice(customers, p=customer_weights / customer_weights.sum()),
                         rng.choice(skus, p=sku_weights / sku_weights.sum()),
                         start + int(second),
                         int(rng.choice([1, 2, 3, 4, 5], p=[0.05, 0.1, 0.25, 0.35, 0.25]))))
    return pd.DataFrame(rows, columns=["customer", "sku", "event_time", "stars"])


def product_image(number: int, mode: str = "L", size: tuple[int, int] = (32, 32)) -> Image.Image:
    """Draw a small deterministic product picture: a shape whose shade depends on the number."""
    shade = 40 + (number * 37) % 180
    base = Image.new("L", size, 255)
    pixels = np.array(base)
    height, width = pixels.shape
    pixels[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = shade
    image = Image.fromarray(pixels, mode="L")
    return image if mode == "L" else image.convert(mode)


# ---------------------------------------------------------------- writing


def write_csv(frame: pd.DataFrame, path: Path, encoding: str = "utf-8") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(frame.to_csv(index=False, lineterminator="\n").encode(encoding))


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)


def write_images(items: pd.DataFrame, folder: Path) -> None:
    """Write one PNG per item, grey for odd product numbers and RGB for even ones."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, path in enumerate(items["image"], start=1):
        product_image(number, "L" if number % 2 else "RGB").save(folder / Path(path).name, format="PNG")


def write_case(cases: Path, name: str, about: str, tables: dict[str, pd.DataFrame], stage: str = "validate",
               check: str | None = None, match: str | None = None, params: dict | None = None,
               baseline: bool = False, images: bool = False) -> Path:
    """Write one case: its tables as CSV (any table may be None to leave it out) and its case.yaml."""
    folder = cases / name
    folder.mkdir(parents=True)
    for table, frame in tables.items():
        if frame is not None:
            write_csv(frame, folder / f"{table}.csv")
    if images:
        write_images(tables["items"], folder / "images")
    spec = {"about": about, "stage": stage}
    if check:
        spec["check"] = check
    if match:
        spec["match"] = match
    if params:
        spec["params"] = params
    if baseline:
        spec["baseline"] = True
    (folder / "case.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return folder


def without_images(items: pd.DataFrame) -> pd.DataFrame:
    return items.drop(columns="image")


# ---------------------------------------------------------------- cases ingest rejects


def ingest_cases(shop: dict[str, pd.DataFrame], cases: Path) -> None:
    events, items, users = shop["interactions"], without_images(shop["items"]), shop["users"]
    _missing_column_cases(events, items, users, cases)
    _broken_file_cases(events, items, users, cases)
    _float_id_cases(events, items, users, cases)
    _bad_value_cases(events, items, users, cases)


def _missing_column_cases(events: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame, cases: Path) -> None:
    write_case(cases, "renamed_column", "The customer column was renamed upstream.",
               {"interactions": events.rename(columns={"customer": "client"}), "items": items, "users": users},
               stage="ingest", match=r"column 'customer' \(contract column 'interactions\.user_id'\) not found")
    write_case(cases, "catalog_without_id_column", "The catalog export lost its sku column.",
               {"interactions": events, "items": items.rename(columns={"sku": "product"}), "users": users},
               stage="ingest", match=r"items\.csv: column 'sku' \(contract column 'items\.item_id'\) not found")


def _broken_file_cases(events: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame, cases: Path) -> None:
    folder = write_case(cases, "empty_file", "The event export is an empty file.",
                        {"interactions": None, "items": items, "users": users},
                        stage="ingest", match=r"interactions\.csv: file is empty")
    (folder / "interactions.csv").write_bytes(b"")

    write_case(cases, "header_only", "The event export has its header and no rows.",
               {"interactions": events.head(0), "items": items, "users": users},
               stage="ingest", match=r"interactions\.csv: file has a header but no rows")

    folder = write_case(cases, "truncated_parquet", "The event export in Parquet was cut off half-way.",
                        {"interactions": None, "items": items, "users": users},
                        stage="ingest", match=r"interactions\.parquet: cannot be read as Parquet")
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(events, preserve_index=False), buffer)
    (folder / "interactions.parquet").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])

    folder = write_case(cases, "not_utf8", "The catalog was exported in Windows-1252, not UTF-8.",
                        {"interactions": events, "items": None, "users": users},
                        stage="ingest", match=r"items\.csv: not valid UTF-8 at byte \d+")
    accented = items.assign(name=items["name"].str.replace("Product 03", "Café crème shirt"))
    write_csv(accented, folder / "items.csv", encoding="cp1252")


def _bad_value_cases(events: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame, cases: Path) -> None:
    write_case(cases, "unparseable_timestamp", "An event time reads 'yesterday'.",
               {"interactions": _set(events, 4, "event_time", "yesterday"), "items": items, "users": users},
               stage="ingest", match=r"column 'timestamp' row 5: cannot parse timestamp 'yesterday'")
    write_case(cases, "non_numeric_rating", "A rating was exported as a word.",
               {"interactions": _set(events, 6, "stars", "five"), "items": items, "users": users},
               stage="ingest", match=r"column 'rating' row 7: 'five' is not a number")


def _float_id_cases(events: pd.DataFrame, items: pd.DataFrame, users: pd.DataFrame, cases: Path) -> None:
    """Write the two cases of numeric ids stored as floats: one null, one fractional."""
    numbered = events.assign(customer=events["customer"].str[2:].astype(float))
    numbered.loc[9, "customer"] = np.nan
    folder = write_case(cases, "float_ids_with_nan", "Customer ids came out of a spreadsheet as floats, one empty.",
                        {"interactions": None, "items": items, "users": None},
                        stage="ingest", match=r"column 'user_id' has 1 null id\(s\); first at row 10")
    write_parquet(numbered, folder / "interactions.parquet")
    skus = events.assign(sku=events["sku"].str[4:].astype(float))
    skus.loc[11, "sku"] = 12.5
    folder = write_case(cases, "fractional_ids", "A product id is 12.5 in a float column.",
                        {"interactions": None, "items": None, "users": None},
                        stage="ingest", match=r"column 'item_id' row 12: id 12\.5 is not an integer or text")
    write_parquet(skus, folder / "interactions.parquet")


def _set(frame: pd.DataFrame, row: int, column: str, value) -> pd.DataFrame:
    changed = frame.copy()
    changed[column] = changed[column].astype(object)
    changed.loc[row, column] = value
    return changed


# ---------------------------------------------------------------- cases validate rejects, one run


def table_cases(shop: dict[str, pd.DataFrame], cases: Path) -> None:
    events, items, users = shop["interactions"], without_images(shop["items"]), shop["users"]
    day = 86_400

    def case(name: str, about: str, check: str, interactions=events, catalog=items, customers=users, params=None):
        write_case(cases, name, about, {"interactions": interactions, "items": catalog, "users": customers},
                   check=check, params=params)

    case("rating_above_max", "Ratings exported on a 0-10 scale.", "interactions.rating_range",
         interactions=events.assign(stars=events["stars"] * 2))
    case("rating_zero", "Some ratings are 0 stars.", "interactions.rating_range",
         interactions=_set(_set(events, 3, "stars", 0), 8, "stars", 0))
    case("rating_not_allowed", "Half-star ratings where only whole stars exist.", "interactions.rating_values",
         interactions=_set(events, 5, "stars", 3.5), params={"validate.rating_values": [1, 2, 3, 4, 5]})
    case("missing_ratings", "Three events lost their rating.", "interactions.not_null",
         interactions=_set(_set(_set(events, 2, "stars", None), 30, "stars", None), 31, "stars", None))
    case("negative_timestamp", "An event time is negative.", "interactions.timestamp_floor",
         interactions=_set(events, 12, "event_time", -day))
    case("timestamp_before_floor", "An event is dated 1990, before the shop existed.",
         "interactions.timestamp_floor", interactions=_set(events, 13, "event_time", 631_152_000))
    case("future_timestamp", "An event is dated 2027, after the run date.", "interactions.timestamp_future",
         interactions=_set(events, 14, "event_time", 1_811_808_000))
    case("timestamps_in_milliseconds", "Event times are Unix milliseconds read as seconds.",
         "interactions.timestamp_future", interactions=events.assign(event_time=events["event_time"] * 1000))
    case("stale_export", "The export stopped 30 days before the run date.", "interactions.freshness",
         interactions=events.assign(event_time=events["event_time"] - 30 * day),
         params={"validate.severity.interactions.freshness": "block"})
    case("duplicate_events", "Ten events were exported twice.", "interactions.duplicate_events",
         interactions=pd.concat([events, events.iloc[20:30]], ignore_index=True))
    case("unknown_item", "Events name a product that is not in the catalog.", "interactions.known_items",
         interactions=_set(_set(events, 40, "sku", "sku-99"), 41, "sku", "sku-99"))
    case("unknown_user", "An event names a customer missing from the customer file.", "interactions.known_users",
         interactions=_set(events, 50, "customer", "c-77"))
    case("duplicate_item_ids", "The catalog lists sku-05 twice.", "items.unique_ids",
         catalog=pd.concat([items, items.iloc[[4]].assign(name="Product 05 (copy)")], ignore_index=True))
    case("duplicate_user_ids", "The customer file lists c-03 twice.", "users.unique_ids",
         customers=pd.concat([users, users.iloc[[2]]], ignore_index=True))
    case("category_not_allowed", "A product is filed under a category the shop does not have.",
         "items.category_values", catalog=_set(items, 7, "category", "Shoes|Weapons"),
         params={"validate.category_values": list(CATEGORIES)})
    case("release_year_typo", "A launch year was typed as 20250.", "items.release_year_range",
         catalog=_set(items, 9, "launched", 20250))
    case("release_year_zero", "A launch year of 0 stands for unknown.", "items.release_year_range",
         catalog=_set(items, 10, "launched", 0))


# ---------------------------------------------------------------- cases with broken images


def image_cases(shop: dict[str, pd.DataFrame], cases: Path) -> None:
    events, items, users = shop["interactions"], shop["items"], shop["users"]

    def case(name: str, about: str, check: str, catalog=items) -> Path:
        return write_case(cases, name, about, {"interactions": events, "items": catalog, "users": users},
                          check=check, images=True)

    folder = case("image_not_decodable", "A product image holds random bytes.", "images.decodes")
    (folder / "images" / "sku-03.png").write_bytes(np.random.default_rng(SEED).bytes(300))
    folder = case("image_truncated", "A product image was cut off half-way.", "images.decodes")
    data = (folder / "images" / "sku-04.png").read_bytes()
    (folder / "images" / "sku-04.png").write_bytes(data[: len(data) // 2])
    folder = case("image_missing_file", "A product image named in the catalog is missing.", "images.exists")
    (folder / "images" / "sku-05.png").unlink()
    case("image_outside_data_folder", "A product image path climbs out of the data folder.",
         "images.inside_folder", catalog=_set(items, 5, "image", "data/../params.yaml"))
    folder = case("image_wrong_mode", "A product image is a CMYK JPEG from the print catalog.", "images.mode",
                  catalog=_set(items, 6, "image", f"{RAW}/images/sku-07.jpg"))
    product_image(7, "CMYK").save(folder / "images" / "sku-07.jpg", format="JPEG", quality=90)
    folder = case("image_too_small", "A product image is a 4 x 4 pixel placeholder.", "images.size")
    product_image(8, "L", (4, 4)).save(folder / "images" / "sku-08.png", format="PNG")
    folder = case("image_too_large", "A product image is a 5000 pixel wide banner.", "images.size")
    product_image(9, "L", (5000, 8)).save(folder / "images" / "sku-09.png", format="PNG")


# ---------------------------------------------------------------- cases that differ from the last good run


def snapshot_cases(shop: dict[str, pd.DataFrame], cases: Path) -> None:
    """Write cases that pass on their own but differ from the clean shop, their last good snapshot."""
    events, items, users = shop["interactions"], without_images(shop["items"]), shop["users"]
    week = 7 * 86_400

    def case(name: str, about: str, check: str, interactions=events, catalog=items, customers=users, params=None):
        write_case(cases, name, about, {"interactions": interactions, "items": catalog, "users": customers},
                   check=check, params=params, baseline=True)

    day = pd.to_datetime(events["event_time"], unit="s", utc=True).dt.normalize()
    case("volume_drop", "The events of 4 March are missing.", "snapshot.row_count",
         interactions=events[day != pd.Timestamp("2026-03-04", tz="UTC")])
    case("volume_spike", "Last week's events were appended to this week's.", "snapshot.row_count",
         interactions=pd.concat([events.assign(event_time=events["event_time"] - week), events], ignore_index=True))
    case("rating_shift", "Every rating came out two stars lower.", "snapshot.rating_drift",
         interactions=events.assign(stars=(events["stars"] - 2).clip(lower=1)))
    case("customers_renumbered", "The shop system renumbered every customer.", "snapshot.new_users",
         interactions=events.assign(customer=events["customer"].str.replace("c-", "k-")),
         customers=users.assign(customer=users["customer"].str.replace("c-", "k-")))
    case("catalog_renumbered", "The catalog system renumbered every product.", "snapshot.new_items",
         interactions=events.assign(sku=events["sku"].str.replace("sku-", "p-")),
         catalog=items.assign(sku=items["sku"].str.replace("sku-", "p-")))
    rng = np.random.default_rng(SEED + 1)
    case("popularity_collapse", "A broken join put 60% of events on one slow-selling product.",
         "snapshot.item_popularity_drift",
         interactions=events.assign(sku=np.where(rng.random(len(events)) < 0.6, "sku-30", events["sku"])),
         params={"validate.severity.snapshot.item_popularity_drift": "block"})
    case("activity_flattened", "Events were spread evenly over customers by a broken session join.",
         "snapshot.user_activity_drift",
         interactions=events.assign(customer=[users["customer"][n % len(users)] for n in range(len(events))]))


def generate(folder: Path) -> tuple[Path, Path]:
    """Write clean_shop/ and bad_inputs/ under `folder`, replacing what is there, and return both."""
    clean, cases = folder / "clean_shop", folder / "bad_inputs"
    for path in (clean, cases):
        if path.exists():
            shutil.rmtree(path)
    shop = clean_shop()
    for table, frame in shop.items():
        write_csv(frame, clean / f"{table}.csv")
    write_images(shop["items"], clean / "images")
    cases.mkdir(parents=True)
    (cases / "base_params.yaml").write_text(
        "# Params every case runs with (dotted keys); a case's own params apply on top.\n"
        + yaml.safe_dump(BASE_PARAMS, sort_keys=False), encoding="utf-8")
    ingest_cases(shop, cases)
    table_cases(shop, cases)
    image_cases(shop, cases)
    snapshot_cases(shop, cases)
    return clean, cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=HERE, help="folder to write clean_shop/ and bad_inputs/ in")
    clean, cases = generate(parser.parse_args().output)
    print(f"wrote {clean} and {len(list(cases.glob('*/case.yaml')))} cases in {cases}")


if __name__ == "__main__":
    main()
