import base64
import re

import pandas as pd
import pytest

from pipelines import evaluate, report
from tests.factories import save_model, synthetic_tables
from tests.pipelines.test_evaluate import PARAMS


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """Results and gate of a candidate judged against a production model on synthetic data."""
    folder = tmp_path_factory.mktemp("report")
    tables = synthetic_tables(n_users=120)
    production = {"version": "v0007", "path": save_model(tables, folder / "random.pt", seed=1)}
    return evaluate.judge(save_model(tables, folder / "popular.pt", popular=True), tables, PARAMS, production)


def render(judged, curves=None, validation=None, compression=None):
    results, decision = judged
    return report.render_html(results, decision, curves or {}, validation, compression)


def images(page):
    return [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_page_is_self_contained(judged):
    page = render(judged)
    assert page.startswith("<!DOCTYPE html>")
    assert "http://" not in page
    assert "https://" not in page
    assert all(image.startswith(b"\x89PNG") for image in images(page))


def test_gate_table_lists_every_check(judged):
    _, decision = judged
    page = render(judged)
    for check in decision["checks"]:
        assert f"<td>{check['name']}</td>" in page
    assert "<h2>Gate: " in page


def test_metrics_for_candidate_production_and_baselines(judged):
    page = render(judged)
    for label in ("candidate", "production", "most popular", "item-kNN", "EASE"):
        assert f"<td>{label}</td>" in page
    assert "<h2>Candidate against production v0007</h2>" in page
    assert "<h2>Slices (test_ndcg@10)</h2>" in page
    assert len(images(page)) == 1  # the metrics chart; no curves and no compression given


def test_curves_validation_and_compression_shown(judged):
    curves = {"val_ndcg@10": pd.DataFrame({"step": [0, 1], "val_ndcg@10": [0.05, 0.07]})}
    validation = {"passed": False, "checks": [
        {"table": "interactions", "column": "rating", "expectation": "expect_column_values_to_be_between",
         "success": False, "unexpected_count": 4},
        {"table": "items", "column": "item_id", "expectation": "expect_column_values_to_be_unique", "success": True}]}
    compression = {"candidates": [{"name": "int8", "size_mb": 0.3, "latency_p95_ms": 1.0, "test_ndcg@10": 0.1,
                                   "passed": True}]}
    page = render(judged, curves, validation, compression)
    assert "<h2>Training curves</h2>" in page
    assert '<span class="fail">FAILED</span></h2><p>1 of 2 expectations met.</p>' in page
    assert "<td>expect_column_values_to_be_between</td>" in page
    assert "<h2>Compression trade-off</h2>" in page
    assert "<td>int8</td>" in page
    assert len(images(page)) == 3


def test_text_is_escaped(judged):
    results, decision = judged
    results = {**results, "notes": ["EASE <skipped> & noted"]}
    page = report.render_html(results, decision, {}, None, None)
    assert "<li>EASE &lt;skipped&gt; &amp; noted</li>" in page


def test_curves_read_from_dvclive(tmp_path):
    folder = tmp_path / report.CURVES_DIR
    folder.mkdir(parents=True)
    (folder / "train_loss.tsv").write_text("step\ttrain_loss\n0\t5.8\n1\t5.4\n")
    curves = report.read_curves(tmp_path)
    assert list(curves) == ["train_loss"]
    assert curves["train_loss"]["train_loss"].tolist() == [5.8, 5.4]


def test_markdown_summary(judged):
    text = report.render_markdown(*judged)
    assert text.startswith("# Evaluation\n\nTest users: 120; production model: v0007\n")
    assert "| EASE | " in text
