import numpy as np
import pytest
import torch

from pipelines import onnx_export
from tests.pipelines.test_quantize import inputs, quantized, small_model


def user_inputs(model):
    users, history = inputs(model, users=25)
    history[0] = 0  # a user with no history at all
    history[1, :-1] = 0  # and one with a single item
    return users.numpy(), history.numpy()


@pytest.mark.parametrize("kind", ["fp32", "int8", "int4"])
def test_onnx_matches_pytorch(tmp_path, kind):
    model = small_model(n_items=200, n_users=30, dim=32)
    if kind != "fp32":
        model = quantized(model, int(kind[3:]), fast=False)
    path = onnx_export.export(model, 200, model.history_length, tmp_path / "model.onnx")
    parity = onnx_export.check_parity(model, path, *user_inputs(model), k=10, tolerance=1e-4)
    assert parity["scores_match"], parity
    assert parity["same_top10_share"] == 1.0
    assert parity["passed"]


def test_quantized_onnx_keeps_integer_tables(tmp_path):
    model = small_model(n_items=2000, n_users=30, dim=32)
    fp32_path = onnx_export.export(model, 2000, model.history_length, tmp_path / "fp32.onnx")
    int4_path = onnx_export.export(quantized(model, 4, fast=False), 2000, model.history_length, tmp_path / "int4.onnx")
    assert int4_path.stat().st_size * 4 < fp32_path.stat().st_size


def test_parity_detects_a_different_model(tmp_path):
    model = small_model(n_items=200, n_users=30, dim=32)
    path = onnx_export.export(model, 200, model.history_length, tmp_path / "model.onnx")
    with torch.no_grad():
        model.item_embedding.weight[5:] += 0.5
    parity = onnx_export.check_parity(model, path, *user_inputs(model), k=10, tolerance=1e-4)
    assert parity["passed"] is False
    assert parity["max_abs_difference"] > 1e-3
    assert np.isfinite(parity["max_abs_difference"])
