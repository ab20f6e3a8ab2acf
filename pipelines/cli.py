"""The `shoprec` command: run a stage, ask the production model for recommendations, or manage model versions."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Callable

from pipelines import registry_cli
from pipelines.errors import ShoprecError

log = logging.getLogger("pipelines")

STAGES = ("ingest", "validate", "split", "augment", "train", "compress", "evaluate", "coldstart", "promote")


def setup_logging() -> None:
    level = os.environ.get("SHOPREC_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Libraries that log every internal step at INFO; their warnings still show.
    for name in ("great_expectations", "dvclive"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))


def run_stage(name: str, stage: Callable[[], None]) -> None:
    """Run one stage's entry point; a ShoprecError ends it with its message and exit code 1."""
    setup_logging()
    try:
        stage()
    except ShoprecError as error:
        log.error("%s stage failed: %s", name, error)
        sys.exit(1)


def _recommend(args: argparse.Namespace) -> int:
    from pipelines.recommend import format_recommendations, recommend_for_user

    rows = recommend_for_user(args.user, args.k)
    print(format_recommendations(args.user, rows, args.k))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shoprec", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for stage in STAGES:
        commands.add_parser(stage, help=f"run the {stage} stage in the current workspace")
    recommend = commands.add_parser("recommend", help="print the top-K items for a user from the production model")
    recommend.add_argument("--user", required=True, help="user id, as in the interactions table")
    recommend.add_argument("-k", type=int, default=10, help="number of items to print (default 10)")
    registry_cli.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in STAGES:
        importlib.import_module(f"pipelines.{args.command}").main()
        return 0
    setup_logging()
    try:
        if args.command == "models":
            print(registry_cli.run(args))
            return 0
        return _recommend(args)
    except ShoprecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
