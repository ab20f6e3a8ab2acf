"""Reports of the evaluate stage for people and for DVC.

`reports/evaluation.html` is one self-contained page that opens in a browser
without a server, because its charts are PNG images embedded as base64. It
shows the gate, the metrics of the candidate, production and baselines with
their intervals, the slices, the training curves from `dvclive/`, the
data-quality summary from `reports/validation.json`, and the compression
trade-off when `reports/compression.json` exists. `reports/evaluation.md` is a short text
version. `reports/plots/` holds the data DVC plots: NDCG@k for k = 1..max K
per system, and the headline metrics per system.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines import config

HTML_REPORT = config.REPORTS_DIR / "evaluation.html"
MARKDOWN_REPORT = config.REPORTS_DIR / "evaluation.md"
PLOTS_DIR = config.REPORTS_DIR / "plots"
NDCG_CURVE_PLOT = PLOTS_DIR / "ndcg_at_k.csv"
HEADLINE_PLOT = PLOTS_DIR / "headline.json"
CURVES_DIR = Path("dvclive/plots/metrics")
VALIDATION_FILE = config.REPORTS_DIR / "validation.json"
# Written by a compression stage: {"candidates": [{"name", "size_mb", "latency_p95_ms", "<gate metric>", "passed"}]}.
COMPRESSION_FILE = config.REPORTS_DIR / "compression.json"

LABELS = {"model": "candidate", "production": "production", "popularity": "most popular",
          "item_knn": "item-kNN", "ease": "EASE"}
HEADLINE = ("ndcg", "recall", "mrr", "hit_rate")
STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.pass { color: #1a7f37; } .fail { color: #cf222e; font-weight: bold; } .skipped { color: #777; }
.verdict { font-size: 1.4em; } img { max-width: 100%; }
"""


def label(system: str) -> str:
    return LABELS.get(system, system)


def headline_names(results: dict[str, Any]) -> list[str]:
    """Return the per-user metrics at the first K, which the charts and tables lead with."""
    k = results["ks"][0]
    return [f"test_{name}@{k}" for name in HEADLINE]


def png_base64(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def metrics_chart(results: dict[str, Any]) -> str:
    """Grouped bars of the headline metrics per system with their bootstrap intervals, as base64 PNG."""
    from matplotlib.figure import Figure

    names, systems = headline_names(results), list(results["systems"])
    figure = Figure(figsize=(9, 4))
    axes = figure.subplots()
    width = 0.8 / len(systems)
    for offset, system in enumerate(systems):
        values = [results["systems"][system][name] for name in names]
        intervals = [results["intervals"][system][name] for name in names]
        errors = [[value - interval["low"] for value, interval in zip(values, intervals)],
                  [interval["high"] - value for value, interval in zip(values, intervals)]]
        positions = [index + offset * width for index in range(len(names))]
        axes.bar(positions, values, width, yerr=errors, capsize=3, label=label(system))
    axes.set_xticks([index + width * (len(systems) - 1) / 2 for index in range(len(names))], names)
    axes.set_ylabel("mean over test users")
    axes.legend()
    return png_base64(figure)


def curves_chart(curves: dict[str, pd.DataFrame]) -> str:
    """Draw one panel per training curve (value against epoch), as base64 PNG."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4 * len(curves), 3))
    panels = figure.subplots(1, len(curves), squeeze=False)[0]
    for axes, (name, frame) in zip(panels, curves.items()):
        axes.plot(frame["step"], frame[name], marker="o")
        axes.set_title(name)
        axes.set_xlabel("epoch")
    return png_base64(figure)


def compression_chart(candidates: list[dict[str, Any]], metric: str) -> str:
    """Gate metric against model size for each compressed candidate, as base64 PNG."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    for candidate in candidates:
        axes.scatter(candidate["size_mb"], candidate.get(metric, float("nan")))
        axes.annotate(str(candidate["name"]), (candidate["size_mb"], candidate.get(metric, float("nan"))))
    axes.set_xlabel("model size (MB)")
    axes.set_ylabel(metric)
    return png_base64(figure)


def read_curves(root: Path) -> dict[str, pd.DataFrame]:
    """Training curves that DVCLive wrote (one TSV per metric), keyed by metric name."""
    folder = root / CURVES_DIR
    if not folder.is_dir():
        return {}
    return {path.stem: pd.read_csv(path, sep="\t") for path in sorted(folder.glob("*.tsv"))}


def read_optional_json(path: Path) -> Any:
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def table(header: list[str], rows: list[list[Any]]) -> str:
    """Render an HTML table. Cells are escaped unless they are markup, given as ("html", text) tuples."""
    def cell(value: Any, tag: str) -> str:
        if isinstance(value, tuple):
            return f"<{tag}>{value[1]}</{tag}>"
        if isinstance(value, float):
            return f"<{tag}>{value:.4f}</{tag}>"
        return f"<{tag}>{html.escape(str(value))}</{tag}>"

    head = "".join(cell(name, "th") for name in header)
    body = "".join("<tr>" + "".join(cell(value, "td") for value in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def verdict_cell(verdict: str) -> tuple[str, str]:
    return ("html", f'<span class="{verdict}">{verdict}</span>')


def number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def gate_section(decision: dict[str, Any]) -> str:
    verdict = "pass" if decision["passed"] else "fail"
    rows = [[check["name"], number(check["value"]), number(check["threshold"]), verdict_cell(check["verdict"]),
             check["rule"], check["note"]] for check in decision["checks"]]
    return (f'<h2>Gate: <span class="verdict {verdict}">{"passed" if decision["passed"] else "FAILED"}</span></h2>'
            + table(["check", "value", "threshold", "verdict", "rule", "note"], rows))


def metrics_section(results: dict[str, Any]) -> str:
    names = headline_names(results)
    rows = []
    for system, values in results["systems"].items():
        intervals = results["intervals"][system]
        rows.append([label(system)] + [f"{values[name]:.4f} [{intervals[name]['low']:.4f}, {intervals[name]['high']:.4f}]"
                                       for name in names])
    confidence = results["bootstrap"]["confidence"]
    text = (f"<h2>Metrics</h2><p>{results['test_users']} test users; brackets are {confidence:.0%} bootstrap "
            f"intervals over users ({results['bootstrap']['resamples']} resamples).</p>"
            f'<img alt="metrics chart" src="data:image/png;base64,{metrics_chart(results)}">'
            + table(["system", *names], rows))
    all_names = list(results["systems"]["model"])
    rows = [[name] + [results["systems"][system].get(name, "") for system in results["systems"]] for name in all_names]
    return text + "<h3>All metrics</h3>" + table(["metric", *map(label, results["systems"])], rows)


def difference_section(results: dict[str, Any]) -> str:
    if not results["difference"]:
        return "<h2>Candidate against production</h2><p>No production model yet.</p>"
    rows = [[name, entry["value"], entry["low"], entry["high"]] for name, entry in results["difference"].items()]
    return (f"<h2>Candidate against production {html.escape(str(results['production_version']))}</h2>"
            + table(["metric", "candidate - production", "interval low", "interval high"], rows))


def slices_section(results: dict[str, Any], metric: str) -> str:
    systems = list(results["systems"])
    rows = [[name, entry["users"]] + [entry["systems"][system].get(metric, "") for system in systems]
            for name, entry in results["slices"].items()]
    return f"<h2>Slices ({html.escape(metric)})</h2>" + table(["slice", "test users", *map(label, systems)], rows)


def efficiency_section(results: dict[str, Any]) -> str:
    rows = [[label(system), entry["size_mb"], entry["latency_p50_ms"], entry["latency_p95_ms"], entry["requests"]]
            for system, entry in results["efficiency"].items()]
    return ("<h2>Size and latency</h2><p>One user per top-10 request, on the machine that ran the stage.</p>"
            + table(["model", "size (MB)", "median (ms)", "95th percentile (ms)", "requests"], rows))


def curves_section(curves: dict[str, pd.DataFrame]) -> str:
    if not curves:
        return "<h2>Training curves</h2><p>No curves in dvclive/plots/metrics.</p>"
    return f'<h2>Training curves</h2><img alt="training curves" src="data:image/png;base64,{curves_chart(curves)}">'


def validation_section(validation: dict[str, Any] | None) -> str:
    if validation is None:
        return "<h2>Data quality</h2><p>No reports/validation.json.</p>"
    checks = validation.get("checks", [])
    failed = [check for check in checks if not check.get("success")]
    rows = [[check.get("table", ""), check.get("column", ""), check.get("expectation", ""),
             check.get("unexpected_count", "")] for check in failed]
    verdict = "pass" if validation.get("passed") else "fail"
    text = (f'<h2>Data quality: <span class="{verdict}">{"passed" if validation.get("passed") else "FAILED"}</span></h2>'
            f"<p>{len(checks) - len(failed)} of {len(checks)} expectations met.</p>")
    return text + (table(["table", "column", "expectation", "unexpected rows"], rows) if rows else "")


def compression_section(compression: dict[str, Any] | None, metric: str) -> str:
    candidates = (compression or {}).get("candidates") or []
    if not candidates:
        return ""
    rows = [[candidate["name"], candidate["size_mb"], candidate.get("latency_p95_ms", ""), candidate.get(metric, ""),
             verdict_cell("pass" if candidate.get("passed") else "fail")] for candidate in candidates]
    return ("<h2>Compression trade-off</h2>"
            f'<img alt="compression chart" src="data:image/png;base64,{compression_chart(candidates, metric)}">'
            + table(["candidate", "size (MB)", "95th percentile (ms)", metric, "gate"], rows))


def render_html(results: dict[str, Any], decision: dict[str, Any], curves: dict[str, pd.DataFrame],
                validation: dict[str, Any] | None, compression: dict[str, Any] | None) -> str:
    """Render the whole report page."""
    created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    production = results["production_version"] or "none"
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in results["notes"])
    sections = [
        gate_section(decision), metrics_section(results), difference_section(results),
        slices_section(results, decision["metric"]), efficiency_section(results), curves_section(curves),
        validation_section(validation), compression_section(compression, decision["metric"]),
        f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "",
    ]
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>shoprec evaluation</title>"
            f"<style>{STYLE}</style></head><body><h1>shoprec evaluation</h1>"
            f"<p>Created {created}; production model: {html.escape(production)}.</p>"
            + "\n".join(sections) + "</body></html>\n")


def render_markdown(results: dict[str, Any], decision: dict[str, Any]) -> str:
    """Render a short text report: headline metrics per system, then the gate."""
    names = headline_names(results)
    lines = ["# Evaluation", "", f"Test users: {results['test_users']}; production model: "
             f"{results['production_version'] or 'none'}", "",
             "| system | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for system, values in results["systems"].items():
        intervals = results["intervals"][system]
        cells = [f"{values[name]:.4f} [{intervals[name]['low']:.4f}, {intervals[name]['high']:.4f}]" for name in names]
        lines.append(f"| {label(system)} | " + " | ".join(cells) + " |")
    lines += ["", f"## Gate: {'passed' if decision['passed'] else 'FAILED'}", ""]
    lines += [f"- {reason}" for reason in decision["reasons"]]
    return "\n".join(lines) + "\n"


def ndcg_curve_table(results: dict[str, Any]) -> pd.DataFrame:
    """NDCG@k for k = 1..max K, one column per system, for `dvc plots`."""
    curves = results["ndcg_curve"]
    length = max(len(values) for values in curves.values())
    return pd.DataFrame({"k": range(1, length + 1), **curves})


def headline_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Return one row per system with its headline metrics, for a bar chart in `dvc plots`."""
    names = headline_names(results)
    return [{"system": label(system), **{name: values[name] for name in names}}
            for system, values in results["systems"].items()]
