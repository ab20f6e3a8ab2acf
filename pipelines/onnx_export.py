"""Export a scoring model to ONNX and check ONNX Runtime against PyTorch.

The graph is written with onnx.helper rather than torch.onnx.export: torch
2.13's default exporter needs onnxscript, its TorchScript exporter is
deprecated, and neither keeps int8 or 4-bit tables as integers. Here a
quantized model's codes stay integer initializers and are dequantized inside
the graph, so the file is as small as the candidate.

NOTE: ONNX Runtime folds constant subgraphs when a session starts, so a
quantized table becomes fp32 in its memory; only the file stays small.

The graph takes `users` (B,) and `history` (B, L), int64, and returns
`scores` (B, n_items + 1) with column 0 at -inf, like TwoTower.forward.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.io import atomic_path
from pipelines.model import TwoTower

OPSET = 18


class GraphBuilder:
    """Collects nodes and initializers; every helper returns the name of its output."""

    def __init__(self):
        from onnx import helper

        self.helper = helper
        self.nodes: list = []
        self.initializers: dict[str, Any] = {}
        self.count = 0

    def constant(self, name: str, value: np.ndarray | None = None) -> str:
        """Register an initializer once; later calls with the same name reuse it."""
        from onnx import numpy_helper

        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(np.array(value, order="C"), name)
        return name

    def scalar(self, name: str, value, dtype) -> str:
        return self.constant(name, np.array(value, dtype=dtype))

    def op(self, op_type: str, *inputs: str, **attributes) -> str:
        self.count += 1
        output = f"{op_type.lower()}_{self.count}"
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [output], **attributes))
        return output


def table_rows(graph: GraphBuilder, prefix: str, table: dict[str, Any], index: str) -> str:
    """fp32 rows `table[index]`; a quantized table gathers codes, scale and offset and dequantizes them."""
    if "weight" in table:
        return graph.op("Gather", graph.constant(f"{prefix}.weight", table["weight"]), index)
    parts = [graph.op("Gather", graph.constant(f"{prefix}.{key}", table[key]), index)
             for key in ("codes", "scale", "offset")]
    return dequantize(graph, *parts, table["bits"])


def whole_table(graph: GraphBuilder, prefix: str, table: dict[str, Any]) -> str:
    """Return the fp32 table; a quantized one is dequantized in the graph from the same initializers."""
    if "weight" in table:
        return graph.constant(f"{prefix}.weight", table["weight"])
    parts = [graph.constant(f"{prefix}.{key}", table[key]) for key in ("codes", "scale", "offset")]
    return dequantize(graph, *parts, table["bits"])


def dequantize(graph: GraphBuilder, codes: str, scale: str, offset: str, bits: int) -> str:
    """scale * code + offset along the last axis, as QuantizedTable computes it."""
    last_axis = graph.constant("last_axis", np.array([-1], dtype=np.int64))
    scaled = graph.op("Mul", signed_codes(graph, codes, bits), graph.op("Unsqueeze", scale, last_axis))
    return graph.op("Add", scaled, graph.op("Unsqueeze", offset, last_axis))


def signed_codes(graph: GraphBuilder, codes: str, bits: int) -> str:
    """fp32 codes; 4-bit bytes hold the even column in the low nibble, stored as code + 8."""
    if bits == 8:
        return graph.op("Cast", codes, to=1)
    low = graph.op("BitwiseAnd", codes, graph.scalar("nibble_mask", 15, np.uint8))
    high = graph.op("BitShift", codes, graph.scalar("nibble_shift", 4, np.uint8), direction="RIGHT")
    last_axis = graph.constant("last_axis", np.array([-1], dtype=np.int64))
    pairs = graph.op("Concat", graph.op("Unsqueeze", low, last_axis), graph.op("Unsqueeze", high, last_axis),
                     axis=-1)
    # Merge the last two axes: shape[:-1] + [-1].
    leading = graph.op("Slice", graph.op("Shape", codes), graph.constant("first_axis", np.array([0], np.int64)),
                       last_axis)
    flat = graph.op("Reshape", pairs, graph.op("Concat", leading, last_axis, axis=0))
    return graph.op("Sub", graph.op("Cast", flat, to=1), graph.scalar("nibble_zero", 8, np.float32))


def gelu(graph: GraphBuilder, x: str) -> str:
    """x * (1 + erf(x / sqrt 2)) / 2, nn.GELU's exact form."""
    erf = graph.op("Erf", graph.op("Div", x, graph.scalar("sqrt2", math.sqrt(2), np.float32)))
    half_x = graph.op("Mul", x, graph.scalar("half", 0.5, np.float32))
    return graph.op("Mul", half_x, graph.op("Add", erf, graph.scalar("one", 1.0, np.float32)))


def serving_tensors(model) -> dict[str, Any]:
    """Tables, position logits and MLP layers of a TwoTower or QuantizedTwoTower, as numpy arrays."""
    from pipelines import quantize

    if isinstance(model, TwoTower):
        folded = quantize.fold(model)
        layers = [{**layer, **{key: layer[key].numpy() for key in ("weight", "bias") if key in layer}}
                  for layer in folded["mlp"]]
        return {"items": {"weight": folded["items"].numpy()}, "users": {"weight": folded["users"].numpy()},
                "position_logits": folded["position_logits"].numpy(), "mlp": layers}
    tables = {}
    for name, table in (("items", model.item_table), ("users", model.user_embedding)):
        tables[name] = {"codes": table.codes.numpy(), "scale": table.scale.numpy(), "offset": table.offset.numpy(),
                        "bits": table.bits}
    layers = []
    for layer in model.user_mlp:
        if isinstance(layer, quantize.Int8Linear):
            layers.append({"type": "int8_linear", "codes": layer.codes.numpy(), "scale": layer.scale.numpy(),
                           "bias": layer.bias.numpy()})
        else:
            layers.append({"type": "gelu"})
    return {**tables, "position_logits": model.position_logits.numpy(), "mlp": layers}


def mlp(graph: GraphBuilder, x: str, layers: list[dict[str, Any]]) -> str:
    for index, layer in enumerate(layers):
        if layer["type"] == "gelu":
            x = gelu(graph, x)
        elif layer["type"] == "linear":
            x = graph.op("Gemm", x, graph.constant(f"mlp.{index}.weight", layer["weight"]),
                         graph.constant(f"mlp.{index}.bias", layer["bias"]), transB=1)
        else:
            codes = graph.op("Cast", graph.constant(f"mlp.{index}.codes", layer["codes"]), to=1)
            scale = graph.constant(f"mlp.{index}.scale", layer["scale"][:, None])
            x = graph.op("Gemm", x, graph.op("Mul", codes, scale),
                         graph.constant(f"mlp.{index}.bias", layer["bias"]), transB=1)
    return x


def build_graph(model, n_items: int, history_length: int):
    """Build the ONNX model of `model`'s scoring: TwoTower.forward's computation on the folded tensors."""
    import onnx
    from onnx import TensorProto, helper

    tensors = serving_tensors(model)
    graph = GraphBuilder()
    history_vectors = table_rows(graph, "items", tensors["items"], "history")
    present = graph.op("Greater", "history", graph.scalar("zero", 0, np.int64))
    logits = graph.op("Where", present, graph.constant("position_logits", tensors["position_logits"]),
                      graph.scalar("minus_inf", -np.inf, np.float32))
    # A user with no history has only -inf logits; Where sends those weights to 0, as nan_to_num does.
    weights = graph.op("Where", present, graph.op("Softmax", logits, axis=1), graph.scalar("zero_float", 0, np.float32))
    second_axis = graph.constant("second_axis", np.array([1], dtype=np.int64))
    pooled = graph.op("Squeeze", graph.op("MatMul", graph.op("Unsqueeze", weights, second_axis), history_vectors),
                      second_axis)
    newest = graph.op("Gather", history_vectors, graph.scalar("newest", -1, np.int64), axis=1)
    user_rows = table_rows(graph, "users", tensors["users"], "users")
    user_vectors = mlp(graph, graph.op("Concat", pooled, newest, user_rows, axis=1), tensors["mlp"])
    scores = graph.op("Gemm", user_vectors, whole_table(graph, "items", tensors["items"]), transB=1)
    padding = np.zeros(n_items + 1, dtype=np.float32)
    padding[0] = -np.inf
    graph.nodes.append(helper.make_node("Add", [scores, graph.constant("padding", padding)], ["scores"]))

    onnx_graph = helper.make_graph(
        graph.nodes, "shoprec_two_tower",
        [helper.make_tensor_value_info("users", TensorProto.INT64, ["batch"]),
         helper.make_tensor_value_info("history", TensorProto.INT64, ["batch", history_length])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", n_items + 1])],
        list(graph.initializers.values()))
    onnx_model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                   producer_name="shoprec")
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


def export(model, n_items: int, history_length: int, path: Path) -> Path:
    """Write the ONNX model of `model` to `path`, atomically."""
    import onnx

    onnx_model = build_graph(model, n_items, history_length)
    with atomic_path(Path(path)) as tmp:
        onnx.save(onnx_model, str(tmp))
    return Path(path)


def check_parity(model, path: Path, users: np.ndarray, histories: np.ndarray, k: int = 10,
                 tolerance: float = 1e-4) -> dict[str, Any]:
    """Compare ONNX Runtime's scores and top-k with PyTorch's on the given users.

    Scores match when |onnx - torch| <= tolerance x (1 + |torch|). Passes when
    every score matches and every user's top-k items are the same, in order.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (onnx_scores,) = session.run(["scores"], {"users": users.astype(np.int64),
                                               "history": histories.astype(np.int64)})
    with torch.no_grad():
        torch_scores = model(torch.from_numpy(users), torch.from_numpy(histories)).numpy()
    finite = np.isfinite(torch_scores)
    same_infinities = bool(np.array_equal(finite, np.isfinite(onnx_scores)))
    difference = np.abs(onnx_scores[finite] - torch_scores[finite])
    allowed = tolerance * (1 + np.abs(torch_scores[finite]))
    top_torch = np.argsort(-torch_scores, axis=1, kind="stable")[:, :k]
    top_onnx = np.argsort(-onnx_scores, axis=1, kind="stable")[:, :k]
    same_top = np.all(top_torch == top_onnx, axis=1)
    return {
        "users": int(len(users)),
        "max_abs_difference": float(difference.max(initial=0.0)),
        "tolerance": tolerance,
        "scores_match": bool(same_infinities and np.all(difference <= allowed)),
        f"same_top{k}_share": float(same_top.mean()) if len(same_top) else 1.0,
        "passed": bool(same_infinities and np.all(difference <= allowed) and same_top.all()),
    }
