"""Magnitude pruning of the two-tower model, with a short masked fine-tune and a sparse saved form.

The importance of a weight is |w| / max|w| of its tensor. The least important
weights of every embedding table and linear weight matrix are set to zero,
either the same fraction of each tensor (`per_tensor`) or one threshold over
all of them (`global`). A fine-tune then trains the surviving weights with
the train stage's loss while the pruned ones stay zero, and the zeros are
kept in the saved model (the pruning is permanent).

A pruned tensor is saved as a bit mask (one bit per weight) plus its nonzero
values, so at 50% sparsity an fp32 tensor takes 4.5 bits per weight instead
of 32.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from pipelines.errors import ConfigError
from pipelines.model import TwoTower

log = logging.getLogger(__name__)

SCOPES = ("per_tensor", "global")
VALID_METRIC = "val_ndcg@10"


def check_sparsity(value: Any, param: str) -> float:
    """Return `value` if it is a number in [0, 1), else raise a ConfigError naming `param`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"params.yaml: {param} is {value!r}, expected a sparsity in [0, 1)")
    return float(value)


def check_scope(value: Any, param: str) -> str:
    if value not in SCOPES:
        raise ConfigError(f"params.yaml: {param} is {value!r}, expected one of {list(SCOPES)}")
    return value


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Weights of every embedding table and linear layer, by state_dict name; biases are kept whole."""
    return {f"{name}.weight": module.weight for name, module in model.named_modules()
            if isinstance(module, (nn.Embedding, nn.Linear))}


def importance(weight: torch.Tensor) -> torch.Tensor:
    """|w| / max|w| of one tensor; an all-zero tensor has importance 0 everywhere."""
    magnitude = weight.detach().abs().float()
    peak = magnitude.max()
    return magnitude / peak if peak > 0 else magnitude


def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float, scope: str) -> dict[str, torch.Tensor]:
    """Boolean masks (True = kept) that remove round(sparsity x size) of the least important weights.

    `per_tensor` removes that share of each tensor. `global` ranks all weights
    together by their per-tensor importance, so the total matches while each
    tensor ends up with its own sparsity.
    """
    scores = {name: importance(weight).flatten() for name, weight in weights.items()}
    if scope == "per_tensor":
        return {name: keep_top(score, sparsity).view_as(weights[name]) for name, score in scores.items()}
    kept = keep_top(torch.cat(list(scores.values())), sparsity)
    masks, start = {}, 0
    for name, score in scores.items():
        masks[name] = kept[start:start + len(score)].view_as(weights[name])
        start += len(score)
    return masks


def keep_top(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Mask keeping the len - round(sparsity x len) highest scores; ties are broken by position."""
    keep = len(score) - int(round(sparsity * len(score)))
    mask = torch.zeros(len(score), dtype=torch.bool)
    mask[torch.topk(score, keep, sorted=False).indices] = True
    return mask


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    weights = prunable_weights(model)
    with torch.no_grad():
        for name, mask in masks.items():
            weights[name].mul_(mask)


def sparsity_report(model: nn.Module) -> dict[str, dict[str, float]]:
    """Share of exact zeros in each prunable tensor, and over all of them (`total`)."""
    report, zeros_total, size_total = {}, 0, 0
    for name, weight in prunable_weights(model).items():
        zeros, size = int((weight == 0).sum()), weight.numel()
        report[name] = {"size": size, "zeros": zeros, "sparsity": zeros / size}
        zeros_total, size_total = zeros_total + zeros, size_total + size
    report["total"] = {"size": size_total, "zeros": zeros_total, "sparsity": zeros_total / max(size_total, 1)}
    return report


# ---------------------------------------------------------------- fine-tune


def fine_tune(model: TwoTower, masks: dict[str, torch.Tensor], arrays: dict[str, Any],
              hparams: dict[str, Any], steps: int, eval_every: int) -> list[dict[str, float]]:
    """Train the unpruned weights for up to `steps` batches with the train stage's loss, in this process.

    `arrays` and `hparams` are those of train.loop_config_from; the optimizer
    is the train stage's AdamW. Gradients of pruned weights are masked, so
    AdamW never moves them. Validation NDCG@10 is checked before training and
    every `eval_every` steps, and the model ends with the best weights seen.
    Returns those checks.
    """
    from pipelines import train

    torch.manual_seed(int(hparams["seed"]))
    train_data, valid_data = train.worker_datasets(arrays, model.history_length)
    loader = torch.utils.data.DataLoader(train_data, batch_size=int(hparams["batch_size"]), shuffle=True,
                                         generator=torch.Generator().manual_seed(int(hparams["seed"])),
                                         collate_fn=train.collate_batch)
    checks = [{"step": 0, VALID_METRIC: validation_ndcg(model, valid_data, arrays)}]
    best_state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    weights = prunable_weights(model)
    handles = [weights[name].register_hook(lambda grad, mask=mask: grad * mask) for name, mask in masks.items()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(hparams["learning_rate"]),
                                  weight_decay=float(hparams["weight_decay"]))
    step = 0
    try:
        while step < steps:
            for users, history, targets in loader:
                model.train()
                loss = train.sampled_softmax_loss(model, users, history, targets, int(hparams["num_negatives"]))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                if step % eval_every == 0 or step == steps:
                    checks.append({"step": step, VALID_METRIC: validation_ndcg(model, valid_data, arrays)})
                    if checks[-1][VALID_METRIC] > max(check[VALID_METRIC] for check in checks[:-1]):
                        best_state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
                if step == steps:
                    break
    finally:
        for handle in handles:
            handle.remove()
    model.load_state_dict(best_state)
    apply_masks(model, masks)
    model.eval()
    best = max(checks, key=lambda check: check[VALID_METRIC])
    log.info("fine-tuned for %d steps; best %s %.4f at step %d", step, VALID_METRIC, best[VALID_METRIC], best["step"])
    return checks


@torch.no_grad()
def validation_ndcg(model: TwoTower, valid_data, arrays: dict[str, Any]) -> float:
    """NDCG@10 of each validation user's next item, as the train stage validates."""
    from pipelines.metrics import mask_seen, ndcg_at_k

    model.eval()
    users, history, targets = valid_data.tensors
    if len(users) == 0:
        return 0.0
    scores = model(users, history)
    mask_seen(scores, users.numpy(), arrays["seen_indptr"], arrays["seen_indices"])
    hits = (torch.topk(scores, 10, dim=1).indices == targets.unsqueeze(1)).numpy()
    return float(ndcg_at_k(hits, np.ones(len(targets), dtype=np.int64)).mean())


# ---------------------------------------------------------------- sparse form


def encode_sparse(tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """Bit mask of the nonzero entries (row-major, packed 8 per byte) and their values."""
    flat = tensor.detach().flatten()
    nonzero = flat != 0
    bits = np.packbits(nonzero.numpy())
    return {"mask": torch.from_numpy(bits), "values": flat[nonzero].clone()}


def decode_sparse(mask: torch.Tensor, values: torch.Tensor, shape: list[int]) -> torch.Tensor:
    size = int(np.prod(shape))
    nonzero = torch.from_numpy(np.unpackbits(mask.numpy(), count=size).astype(bool))
    if int(nonzero.sum()) != len(values):
        raise ValueError(f"sparse tensor: mask has {int(nonzero.sum())} ones but {len(values)} values are stored")
    dense = torch.zeros(size, dtype=values.dtype)
    dense[nonzero] = values
    return dense.view(*shape)


def prune_model(model: TwoTower, sparsity: float, scope: str, arrays: dict[str, Any],
                hparams: dict[str, Any], steps: int, eval_every: int) -> dict[str, Any]:
    """Prune `model` in place to `sparsity` and fine-tune it; return the sparsity reached and the checks."""
    masks = magnitude_masks({name: weight.detach() for name, weight in prunable_weights(model).items()},
                            sparsity, scope)
    apply_masks(model, masks)
    checks = fine_tune(model, masks, arrays, hparams, steps, eval_every)
    sparsity_reached = sparsity_report(model)
    log.info("pruned to %.1f%% sparsity (%s, requested %.1f%%)", 100 * sparsity_reached["total"]["sparsity"],
             scope, 100 * sparsity)
    return {"sparsity": sparsity_reached, "fine_tune": checks}
