"""`shoprec models`: list, show, promote and roll back registry versions.

Every change of the production pointer takes the registry lock, checks the
target version's files against its model card, appends to the promotion
history and then rewrites the batch recommendations for the new production
model. On any error the pointer stays where it was.
"""

from __future__ import annotations

import argparse
import json

from pipelines import config, registry

HEADLINE = "test_ndcg@10"


def add_parser(commands) -> None:
    """Add the `models` command and its subcommands to the `shoprec` parser."""
    models = commands.add_parser("models", help="list, show, promote or roll back registered model versions")
    actions = models.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="list the versions, oldest first; * marks production")
    show = actions.add_parser("show", help="print a version's model card and check its files")
    show.add_argument("version", help="version name, e.g. v0003 (or 3)")
    show.add_argument("--json", action="store_true", help="print the whole model card as JSON")
    promote = actions.add_parser("promote", help="make an existing version production")
    promote.add_argument("version", help="version name, e.g. v0003 (or 3)")
    promote.add_argument("--reason", required=True, help="why, recorded in the promotion history")
    rollback = actions.add_parser("rollback", help="point production back at the previous production version")
    rollback.add_argument("--reason", required=True, help="why, recorded in the promotion history")
    actions.add_parser("history", help="print every change of the production pointer, oldest first")


def format_list(root) -> str:
    pointer = registry.production(root)
    current = pointer["version"] if pointer else None
    lines = [f"  {'version':<8} {'created':<20} {'gate':<7} {'forced':<6} {HEADLINE:>12}  files"]
    for version in registry.list_versions(root):
        try:
            card = registry.read_card(root, version)
            files = "intact" if not registry.version_problems(root, version) else "CHANGED"
        except registry.RegistryError:
            lines.append(f"{'*' if version == current else ' '} {version:<8} (model card missing or unreadable)")
            continue
        gate = "passed" if (card.get("gate") or {}).get("passed") else "failed"
        value = ((card.get("metrics") or {}).get("model") or {}).get(HEADLINE)
        shown = f"{value:.4f}" if isinstance(value, float) else "-"
        lines.append(f"{'*' if version == current else ' '} {version:<8} {card.get('created_at', '-'):<20} "
                     f"{gate:<7} {'yes' if card.get('forced') else 'no':<6} {shown:>12}  {files}")
    if len(lines) == 1:
        return "no registered versions"
    return "\n".join(lines)


def served_description(root, version: str, card: dict) -> str:
    """Name the file recommend serves, and the compress choice it came from."""
    served = registry.served_file(registry.version_folder(root, version)).name
    chosen = (card.get("compression") or {}).get("chosen")
    return f"{served} (compress chose {chosen})" if served == registry.COMPRESSED_FILE and chosen else served


def format_card(root, version: str) -> str:
    card = registry.read_card(root, version)
    problems = registry.version_problems(root, version)
    gate = card.get("gate") or {}
    lines = [f"version {version}", f"  created:      {card.get('created_at')} by {card.get('triggered_by')}",
             f"  run id:       {card.get('run_id') or '-'}", f"  git revision: {card.get('git_revision')}",
             f"  data version: {', '.join(f'{path} {digest}' for path, digest in (card.get('data_version') or {}).items()) or '-'}",
             f"  gate:         {'passed' if gate.get('passed') else 'FAILED'}{' (promotion forced)' if card.get('forced') else ''}",
             f"  files:        {'intact' if not problems else 'CHANGED: ' + '; '.join(problems)}",
             f"  serves:       {served_description(root, version, card)}", "  metrics:"]
    intervals = (card.get("intervals") or {}).get("model") or {}
    for name, value in ((card.get("metrics") or {}).get("model") or {}).items():
        interval = intervals.get(name)
        bounds = f"  [{interval['low']:.4f}, {interval['high']:.4f}]" if interval else ""
        lines.append(f"    {name:<28} {value:.4f}{bounds}")
    lines += ["  gate reasons:"] + [f"    {reason}" for reason in gate.get("reasons") or []]
    return "\n".join(lines)


def format_history(root) -> str:
    pointer = registry.production(root)
    history = (pointer or {}).get("history") or []
    if not history:
        return "no promotions yet"
    return "\n".join(f"{entry['at']}  {entry['action']:<8} {entry['from'] or '-':>6} -> {entry['to']:<6} "
                     f"by {entry['by']}: {entry['reason']}" for entry in history)


def change_production(root, args: argparse.Namespace) -> str:
    """Promote or roll back, then rewrite the batch recommendations for the new production model."""
    from pipelines import promote

    k = promote.recommendations_k(config.load_params().get("promote") or {})
    if args.action == "promote":
        pointer = registry.promote_version(root, registry.normalize_version(args.version), args.reason)
    else:
        pointer = registry.rollback(root, args.reason)
    target = promote.write_recommendations(root, k)
    return (f"production: {pointer['previous'] or 'none'} -> {pointer['version']} ({args.action}); "
            f"recommendations written to {target}")


def run(args: argparse.Namespace) -> str:
    """Run one `shoprec models` action and return what to print."""
    root = config.workspace()
    if args.action == "list":
        return format_list(root)
    if args.action == "history":
        return format_history(root)
    if args.action == "show":
        version = registry.normalize_version(args.version)
        if args.json:
            return json.dumps(registry.read_card(root, version), indent=2, sort_keys=True)
        return format_card(root, version)
    return change_production(root, args)
