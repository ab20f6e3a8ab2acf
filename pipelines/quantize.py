"""Post-training quantization of the two-tower model: int8 or 4-bit table rows, int8 linear layers.

The item tower is folded first: every item's vector (id embedding plus the
mean of its category embeddings plus its year embedding) is computed once in
fp32, so the catalog becomes one (n_items + 1, dim) table. That table and the
user-id table are quantized per row, row ~= scale * code + offset, with codes
in [-127, 127] (8 bits) or [-8, 7] (4 bits, two codes per byte) and scale and
offset stored as float16. The user MLP's linear layers keep int8 weights with
one symmetric scale per output channel and quantize their input at run time
(dynamic quantization).

Scoring runs on the codes. Two kernels exist for each bit width:

- fast (serving): int8 uses the x86/fbgemm dynamic-quantized linear op, which
  also rounds the user vector to 7-bit unsigned integers; 4-bit uses
  torch._weight_int4pack_mm_for_cpu with bfloat16 activations and output.
- exact (reference, used by the ONNX parity check): fp32 activations against
  the same codes, torch._weight_int8pack_mm and torch._weight_int4pack_mm_for_cpu.

Only the rows a user's history needs are ever dequantized to fp32. The eager
torch.ao.quantization APIs (quantize_dynamic and friends) are deprecated in
torch 2.13, so this module calls the quantized ops directly instead.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from pipelines.errors import ConfigError
from pipelines.model import TwoTower

SUPPORTED_BITS = (4, 8)
# Signed code range of each width; 4-bit codes are stored as code + 8 in one nibble.
CODE_RANGE = {8: (-127, 127), 4: (-8, 7)}
# Clipping tried for 4-bit rows: kept fraction of the row's range, and shift of its centre
# as a fraction of the range.
# A grid of 26 x 5 lowered the squared error of the MovieLens-100K teacher's rows by under 1% more.
CLIP_RATIOS = [0.52 + 0.04 * step for step in range(13)]
CENTRE_SHIFTS = [-0.05, 0.0, 0.05]
# torch._weight_int4pack_mm_for_cpu accepts these group sizes; one group per row needs dim among them.
INT4_GROUP_SIZES = (32, 64, 128, 256)
# The 4-bit kernel packs rows in tiles. Padding the table to a multiple of this keeps the tiling
# the same when the table is packed in chunks of INT4_PACK_CHUNK rows.
INT4_ROW_MULTIPLE = 64
INT4_PACK_CHUNK = 4096
# torch 2.13 warns when a qint8 tensor is created, because quantized dtypes are deprecated in favour
# of torchao. The fbgemm linear op still needs one to pack its weight, so only that warning is ignored.
QINT8_DEPRECATION = r".*quantized tensor creation functions.*deprecated"


def check_bits(bits: Any, param: str, embedding_dim: int | None = None) -> int:
    """Return `bits` if it is a supported width (and fits `embedding_dim`), else raise naming `param`."""
    if isinstance(bits, bool) or bits not in SUPPORTED_BITS:
        raise ConfigError(f"params.yaml: {param} is {bits!r}, expected one of {list(SUPPORTED_BITS)}")
    if bits == 4 and embedding_dim is not None and embedding_dim not in INT4_GROUP_SIZES:
        raise ConfigError(f"params.yaml: {param} is 4, but 4-bit rows need an embedding dim in "
                          f"{list(INT4_GROUP_SIZES)}, got {embedding_dim}")
    return int(bits)


# ---------------------------------------------------------------- rows


def quantize_rows(weight: torch.Tensor, bits: int) -> dict[str, torch.Tensor]:
    """Quantize each row of a 2-D fp32 tensor to `bits`-bit codes with a float16 scale and offset.

    8-bit rows span their min and max. 4-bit rows search a clipped range per
    row (CLIP_RATIOS x CENTRE_SHIFTS) for the least squared error, because with
    16 levels one outlier would otherwise coarsen every other value of the row.
    """
    weight = weight.detach().float()
    low, high = weight.amin(dim=1), weight.amax(dim=1)
    codes, scale, offset = encode_range(weight, low, high, bits)
    if bits == 4:
        codes, scale, offset = search_clipping(weight, low, high, (codes, scale, offset))
    if bits == 8:
        return {"codes": codes.to(torch.int8), "scale": scale, "offset": offset}
    nibbles = (codes + 8).to(torch.uint8)
    return {"codes": nibbles[:, 0::2] | (nibbles[:, 1::2] << 4), "scale": scale, "offset": offset}


def encode_range(weight: torch.Tensor, low: torch.Tensor, high: torch.Tensor, bits: int):
    """Codes, float16 scale and float16 offset that map [low, high] of each row onto the code range."""
    code_min, code_max = CODE_RANGE[bits]
    # float16 has no normal numbers below 2**-14; a narrower row still rounds within scale / 2.
    scale = ((high - low) / (code_max - code_min)).clamp(min=2.0 ** -14).half()
    offset = (low - code_min * scale.float()).half()
    codes = torch.round((weight - offset.float()[:, None]) / scale.float()[:, None]).clamp(code_min, code_max)
    return codes, scale, offset


def search_clipping(weight, low, high, best):
    """Keep, per row, the clipped range whose codes reconstruct the row with the least squared error."""
    codes, scale, offset = (tensor.clone() for tensor in best)
    best_error = reconstruction_error(weight, codes, scale, offset)
    centre, width = (high + low) / 2, high - low
    for ratio in CLIP_RATIOS:
        for shift in CENTRE_SHIFTS:
            middle = centre + shift * width
            trial = encode_range(weight, middle - ratio * width / 2, middle + ratio * width / 2, 4)
            error = reconstruction_error(weight, *trial)
            better = error < best_error
            best_error = torch.where(better, error, best_error)
            codes[better], scale[better], offset[better] = trial[0][better], trial[1][better], trial[2][better]
    return codes, scale, offset


def reconstruction_error(weight, codes, scale, offset) -> torch.Tensor:
    rows = codes * scale.float()[:, None] + offset.float()[:, None]
    return ((rows - weight) ** 2).sum(dim=1)


def unpack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Signed integer codes (..., dim) of stored rows; 4-bit rows hold the even column in the low nibble."""
    if bits == 8:
        return codes
    low = (codes & 0xF).to(torch.int8) - 8
    high = (codes >> 4).to(torch.int8) - 8
    return torch.stack([low, high], dim=-1).flatten(-2)


def pad_rows(tensor: torch.Tensor, multiple: int) -> torch.Tensor:
    missing = -len(tensor) % multiple
    if not missing:
        return tensor
    return torch.cat([tensor, tensor.new_zeros((missing, *tensor.shape[1:]))])


class QuantizedTable(nn.Module):
    """A table stored as per-row quantized codes; indexing returns fp32 rows of the given ids only."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, bits: int,
                 n_rows: int, fast: bool = True):
        super().__init__()
        self.bits, self.n_rows, self.fast = bits, n_rows, fast
        self.register_buffer("codes", codes)
        self.register_buffer("scale", scale.float())
        self.register_buffer("offset", offset.float())
        self._packed = None

    @property
    def dim(self) -> int:
        return self.codes.shape[1] * (2 if self.bits == 4 else 1)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        codes = unpack_codes(self.codes[index], self.bits).float()
        return codes * self.scale[index].unsqueeze(-1) + self.offset[index].unsqueeze(-1)

    __getitem__ = forward  # TwoTower.user_vectors indexes the item table with `items[history]`

    def scores(self, vectors: torch.Tensor) -> torch.Tensor:
        """Dot products (B, n_rows) of fp32 vectors (B, dim) with every row, computed on the codes."""
        vectors = vectors.float().contiguous()
        dots = self._int8_dots(vectors) if self.bits == 8 else self._int4_scores(vectors)
        if self.bits == 8:
            # row = scale * code + offset, so row . v = scale * (code . v) + offset * sum(v)
            dots = dots.addcmul_(vectors.sum(dim=1, keepdim=True), self.offset)
        return dots[:, : self.n_rows]

    def _int8_dots(self, vectors: torch.Tensor) -> torch.Tensor:
        if not self.fast:
            return torch._weight_int8pack_mm(vectors, self.codes, self.scale)
        if self._packed is None:
            self._packed = pack_fbgemm(self.codes, self.scale)
        return torch.ops.quantized.linear_dynamic(vectors, self._packed, True)

    def _int4_scores(self, vectors: torch.Tensor) -> torch.Tensor:
        dtype = torch.bfloat16 if self.fast else torch.float32
        if self._packed is None:
            # row = scale * code + offset with code in [-8, 7]; the kernel computes scale * (nibble - 8) + zero.
            scales_and_zeros = pad_rows(torch.stack([self.scale, self.offset], dim=-1), INT4_ROW_MULTIPLE)
            self._packed = (pack_int4(self.codes), scales_and_zeros.unsqueeze(0).to(dtype))
        packed, scales_and_zeros = self._packed
        return torch._weight_int4pack_mm_for_cpu(vectors.to(dtype), packed, self.dim, scales_and_zeros).float()


def pack_fbgemm(codes: torch.Tensor, scale: torch.Tensor):
    """Pack int8 rows (one scale each, zero point 0) for torch.ops.quantized.linear_dynamic."""
    return pack_fbgemm_linear(codes, scale, None)


def pack_fbgemm_linear(codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
    """Pack int8 weights for torch.ops.quantized.linear_dynamic; the packed copy sits beside `codes`.

    NOTE: the packed copy doubles the int8 table in memory, because the user
    tower still reads history rows from `codes`. torch 2.13 deprecates the
    qint8 tensor this needs; should it go, fast=False (torch._weight_int8pack_mm)
    still scores the same codes, more slowly on large catalogs.
    """
    zero_points = torch.zeros(len(codes), dtype=torch.long)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=QINT8_DEPRECATION, category=UserWarning)
        weight = torch._make_per_channel_quantized_tensor(codes, scale.double(), zero_points, 0)
        return torch.ops.quantized.linear_prepack(weight, bias)


def pack_int4(nibbles: torch.Tensor) -> torch.Tensor:
    """Repack nibble rows into the 4-bit kernel's tiled layout, a few thousand rows at a time."""
    nibbles = pad_rows(nibbles, INT4_ROW_MULTIPLE)
    chunks = []
    for start in range(0, len(nibbles), INT4_PACK_CHUNK):
        block = nibbles[start:start + INT4_PACK_CHUNK]
        unsigned = torch.stack([block & 0xF, block >> 4], dim=-1).flatten(-2).to(torch.int32)
        chunks.append(torch._convert_weight_to_int4pack_for_cpu(unsigned.contiguous(), 1))
    return torch.cat(chunks)


class Int8Linear(nn.Module):
    """A linear layer with int8 weights (one symmetric scale per output) and dynamic int8 inputs."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, fast: bool = True):
        super().__init__()
        self.fast = fast
        self.register_buffer("codes", codes)
        self.register_buffer("scale", scale.float())
        self.register_buffer("bias", bias.float())
        self._packed = None

    @staticmethod
    def quantize(weight: torch.Tensor, bias: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stored tensors of an fp32 layer: int8 codes, float16 scale per output, fp32 bias."""
        weight = weight.detach().float()
        scale = (weight.abs().amax(dim=1) / 127).clamp(min=2.0 ** -14).half()
        codes = torch.round(weight / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
        return {"codes": codes, "scale": scale, "bias": bias.detach().float().clone()}

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        inputs = inputs.contiguous()
        if not self.fast:
            return torch._weight_int8pack_mm(inputs, self.codes, self.scale) + self.bias
        if self._packed is None:
            self._packed = pack_fbgemm_linear(self.codes, self.scale, self.bias)
        return torch.ops.quantized.linear_dynamic(inputs, self._packed, True)


# ---------------------------------------------------------------- model


def fold(model: TwoTower) -> dict[str, Any]:
    """Fold the trained model into serving tensors: item vectors, user table, positions and MLP layers."""
    model.eval()
    layers = []
    for layer in model.user_mlp:
        if isinstance(layer, nn.Linear):
            layers.append({"type": "linear", "weight": layer.weight.detach(), "bias": layer.bias.detach()})
        elif isinstance(layer, nn.GELU):
            layers.append({"type": "gelu"})
        elif not isinstance(layer, nn.Dropout):  # dropout is the identity at inference
            raise ConfigError(f"cannot quantize user_mlp layer {type(layer).__name__}")
    with torch.no_grad():
        items = model.item_vectors()
    return {"items": items, "users": model.user_embedding.weight.detach(),
            "position_logits": model.position_logits.detach(), "mlp": layers}


class FoldedTwoTower(nn.Module):
    """The fp32 model with its item vectors computed once: the unquantized baseline of QuantizedTwoTower."""

    user_vectors = TwoTower.user_vectors

    def __init__(self, model: TwoTower):
        super().__init__()
        folded = fold(model)
        self.n_items, self.history_length = model.n_items, model.history_length
        self.register_buffer("items", folded["items"].clone())
        self.register_buffer("position_logits", folded["position_logits"].clone())
        self.user_embedding = model.user_embedding
        self.user_mlp = model.user_mlp

    def forward(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        scores = self.user_vectors(users, history, self.items) @ self.items.T
        scores[:, 0] = float("-inf")
        return scores


def quantize_model(model: TwoTower, bits: int) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Return the stored tensors of a quantized model and its MLP layer types."""
    folded = fold(model)
    tensors = {"position_logits": folded["position_logits"].clone()}
    for name in ("items", "users"):
        for key, value in quantize_rows(folded[name], bits).items():
            tensors[f"{name}.{key}"] = value
    layer_types = []
    for index, layer in enumerate(folded["mlp"]):
        layer_types.append(layer["type"])
        if layer["type"] == "linear":
            for key, value in Int8Linear.quantize(layer["weight"], layer["bias"]).items():
                tensors[f"mlp.{index}.{key}"] = value
    return tensors, layer_types


class QuantizedTwoTower(nn.Module):
    """The folded two-tower model on quantized tables; scores like TwoTower.forward."""

    # The user side is the same computation as the fp32 model's: this class provides
    # position_logits, user_embedding(users), user_mlp(x) and an indexable item table.
    user_vectors = TwoTower.user_vectors

    def __init__(self, tensors: dict[str, torch.Tensor], config: dict[str, Any], fast: bool = True):
        super().__init__()
        bits = int(config["bits"])
        self.n_items, self.history_length, self.bits = int(config["n_items"]), int(config["history_length"]), bits
        self.register_buffer("position_logits", tensors["position_logits"].float())
        self.item_table = QuantizedTable(tensors["items.codes"], tensors["items.scale"], tensors["items.offset"],
                                         bits, self.n_items + 1, fast)
        self.user_embedding = QuantizedTable(tensors["users.codes"], tensors["users.scale"],
                                             tensors["users.offset"], bits, int(config["n_users"]) + 1, fast)
        layers = []
        for index, layer_type in enumerate(config["mlp_layers"]):
            if layer_type == "gelu":
                layers.append(nn.GELU())
            else:
                layers.append(Int8Linear(tensors[f"mlp.{index}.codes"], tensors[f"mlp.{index}.scale"],
                                         tensors[f"mlp.{index}.bias"], fast))
        self.user_mlp = nn.Sequential(*layers)

    def forward(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Scores of every item for each user, (B, n_items + 1); column 0 is -inf."""
        vectors = self.user_vectors(users, history, self.item_table)
        scores = self.item_table.scores(vectors)
        scores[:, 0] = float("-inf")
        return scores
