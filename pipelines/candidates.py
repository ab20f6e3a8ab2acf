"""Saved forms of the compressed candidates: write, load, and count what they hold.

The teacher and a distilled student are ordinary model bundles (pipelines/model.py).
A compressed candidate is a dict of tensors, numbers, strings and lists too,
so it also loads with `torch.load(..., weights_only=True)`:

- `sparse`: the TwoTower state with pruned tensors as bit mask plus nonzero
  values; loading rebuilds the dense fp32 model.
- `quantized`: the folded model with per-row quantized tables and int8 linear
  layers (pipelines/quantize.py); loading keeps the codes, so it scores on them.

Integer buffers (item categories, year buckets) are stored in the narrowest
integer type that fits their values and widened on load, and the item and
user ids as one newline-separated string each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipelines import prune, quantize
from pipelines.errors import RegistryError
from pipelines.io import atomic_path
from pipelines.model import FORMAT_VERSION, TwoTower, build_model, load_bundle, read_bundle_file

KINDS = ("sparse", "quantized")
NARROW_INTEGERS = (torch.uint8, torch.int16, torch.int32)
ID_SEPARATOR = "\n"


def narrow_integers(tensor: torch.Tensor) -> torch.Tensor:
    """Return the tensor in the narrowest integer type that fits its values (unchanged if not integer)."""
    if tensor.is_floating_point() or tensor.dtype == torch.bool or tensor.numel() == 0:
        return tensor
    low, high = int(tensor.min()), int(tensor.max())
    for dtype in NARROW_INTEGERS:
        info = torch.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return tensor.to(dtype)
    return tensor


def save_candidate(path: Path, kind: str, config: dict[str, Any], tensors: dict[str, torch.Tensor],
                   bundle: dict[str, Any], recipe: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Write a compressed candidate; `bundle` is the teacher's, for its id maps."""
    candidate = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config": config,
        "tensors": {name: tensor.detach().contiguous() for name, tensor in tensors.items()},
        "item_ids": pack_ids(bundle["item_ids"]),
        "user_ids": pack_ids(bundle["user_ids"]),
        "recipe": recipe,
        "extra": extra or {},
    }
    with atomic_path(Path(path)) as tmp:
        torch.save(candidate, tmp)


def pack_ids(ids: list[str]) -> str | list[str]:
    """Ids as one newline-separated string, which pickles in about a third of the bytes of a list.

    Ids that contain a newline stay a list.
    """
    ids = [str(value) for value in ids]
    return ids if any(ID_SEPARATOR in value for value in ids) else ID_SEPARATOR.join(ids)


def unpack_ids(ids: str | list[str]) -> list[str]:
    if isinstance(ids, list):
        return ids
    return ids.split(ID_SEPARATOR) if ids else []


def save_sparse(model: TwoTower, config: dict[str, Any], bundle: dict[str, Any], path: Path,
                recipe: dict[str, Any]) -> None:
    """Save the model with every floating tensor that is smaller as bit mask plus values in that form."""
    tensors, shapes, dtypes = {}, {}, {}
    for name, tensor in model.state_dict().items():
        dtypes[name] = str(tensor.dtype).removeprefix("torch.")
        shapes[name] = list(tensor.shape)
        sparse = prune.encode_sparse(tensor) if tensor.is_floating_point() else None
        dense_bytes = tensor.numel() * tensor.element_size()
        if sparse is not None and sparse_bytes(sparse) < dense_bytes:
            tensors[f"{name}.mask"], tensors[f"{name}.values"] = sparse["mask"], sparse["values"]
        else:
            tensors[name] = narrow_integers(tensor)
    save_candidate(path, "sparse", config, tensors, bundle, recipe, {"shapes": shapes, "dtypes": dtypes})


def sparse_bytes(sparse: dict[str, torch.Tensor]) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in sparse.values())


def save_quantized(model: TwoTower, bits: int, config: dict[str, Any], bundle: dict[str, Any], path: Path,
                   recipe: dict[str, Any]) -> None:
    tensors, layer_types = quantize.quantize_model(model, bits)
    quantized_config = {"n_items": config["n_items"], "n_users": config["n_users"],
                        "embedding_dim": config["embedding_dim"], "history_length": config["history_length"],
                        "bits": bits, "mlp_layers": layer_types}
    save_candidate(path, "quantized", quantized_config, tensors, bundle, recipe)


def read_candidate(path: Path) -> dict[str, Any]:
    """Read any saved model file; a missing, damaged or foreign file is a RegistryError."""
    bundle = read_bundle_file(path)
    if "kind" in bundle:
        if bundle["kind"] not in KINDS:
            raise RegistryError(f"{path}: unknown model kind {bundle['kind']!r}, expected one of {list(KINDS)}")
        bundle["item_ids"], bundle["user_ids"] = unpack_ids(bundle["item_ids"]), unpack_ids(bundle["user_ids"])
    return bundle


def load_candidate(path: Path, fast: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Load the teacher, a student or a compressed candidate as a scoring module in eval mode.

    With `fast` (serving), an fp32 model comes back folded (its item vectors
    computed once, quantize.FoldedTwoTower) and a quantized one uses its fast
    kernels. Without it, an fp32 model is the TwoTower itself and a quantized
    one uses the exact fp32-activation kernels (see pipelines/quantize.py).
    """
    bundle = read_candidate(path)
    kind = bundle.get("kind")
    if kind is None:
        model, bundle = load_bundle(path)
    else:
        try:
            if kind == "sparse":
                model = build_sparse(bundle)
            else:
                model = quantize.QuantizedTwoTower(bundle["tensors"], bundle["config"], fast)
        except (KeyError, ValueError, RuntimeError) as error:
            raise RegistryError(f"{path}: damaged {kind} model ({type(error).__name__}: {error})") from error
    model.eval()
    if fast and isinstance(model, TwoTower):
        model = quantize.FoldedTwoTower(model).eval()
    return model, bundle


def build_sparse(bundle: dict[str, Any]) -> TwoTower:
    tensors, shapes, dtypes = bundle["tensors"], bundle["extra"]["shapes"], bundle["extra"]["dtypes"]
    state = {}
    for name, shape in shapes.items():
        if f"{name}.mask" in tensors:
            state[name] = prune.decode_sparse(tensors[f"{name}.mask"], tensors[f"{name}.values"], shape)
        else:
            state[name] = tensors[name].to(getattr(torch, dtypes[name]))
    model = build_model(bundle["config"], state["item_categories"], state["item_year_buckets"])
    model.load_state_dict(state)
    return model


def parameter_counts(bundle: dict[str, Any]) -> dict[str, int]:
    """Count the weights the model represents and, unless it is quantized, how many are nonzero.

    Integer buffers (the item feature ids) are not weights. A quantized model
    counts one weight per code; biases and the position logits count too.
    """
    kind = bundle.get("kind")
    if kind is None:
        floats = [tensor for tensor in bundle["state_dict"].values() if tensor.is_floating_point()]
        return {"parameters": sum(t.numel() for t in floats), "nonzero": sum(int((t != 0).sum()) for t in floats)}
    if kind == "sparse":
        shapes, tensors = bundle["extra"]["shapes"], bundle["tensors"]
        total = nonzero = 0
        for name, shape in shapes.items():
            if not getattr(torch, bundle["extra"]["dtypes"][name]).is_floating_point:
                continue
            size = int(torch.Size(shape).numel())
            total += size
            values = tensors.get(f"{name}.values", tensors.get(name))
            nonzero += int((values != 0).sum())
        return {"parameters": total, "nonzero": nonzero}
    model = quantize.QuantizedTwoTower(bundle["tensors"], bundle["config"])
    total = model.position_logits.numel()
    total += sum(table.n_rows * table.dim for table in (model.item_table, model.user_embedding))
    total += sum(layer.codes.numel() + layer.bias.numel() for layer in model.user_mlp
                 if isinstance(layer, quantize.Int8Linear))
    return {"parameters": total}
