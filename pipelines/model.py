"""The two-tower recommender and its saved form.

The item tower adds an item-id embedding, the mean of the item's category
embeddings and a release-year embedding. The user tower reads the user's most
recent items (right-aligned, newest last): a learned softmax over positions
pools them, and an MLP combines the pooled vector, the newest item and a
user-id embedding. Under leave-last-out evaluation recency carries most of the
signal, which is why the user side is built from the history.

A saved model (`model.pt`) is a dict of tensors, numbers, strings and lists
only, so it loads with `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipelines.errors import RegistryError

FORMAT_VERSION = 1


class TwoTower(nn.Module):
    def __init__(self, n_items: int, n_users: int, item_categories: torch.Tensor,
                 item_year_buckets: torch.Tensor, embedding_dim: int = 64,
                 history_length: int = 50, dropout: float = 0.2):
        super().__init__()
        n_categories = int(item_categories.max()) if item_categories.numel() else 0
        n_years = int(item_year_buckets.max()) if item_year_buckets.numel() else 0
        self.n_items = n_items
        self.history_length = history_length
        self.item_embedding = nn.Embedding(n_items + 1, embedding_dim, padding_idx=0)
        self.category_embedding = nn.Embedding(n_categories + 1, embedding_dim, padding_idx=0)
        self.year_embedding = nn.Embedding(n_years + 1, embedding_dim, padding_idx=0)
        self.user_embedding = nn.Embedding(n_users + 1, embedding_dim, padding_idx=0)
        self.position_logits = nn.Parameter(torch.zeros(history_length))
        self.user_mlp = nn.Sequential(
            nn.Linear(3 * embedding_dim, 2 * embedding_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(2 * embedding_dim, embedding_dim),
        )
        self.register_buffer("item_categories", item_categories.long())
        self.register_buffer("item_year_buckets", item_year_buckets.long())
        for table in (self.item_embedding, self.category_embedding, self.year_embedding, self.user_embedding):
            nn.init.normal_(table.weight, std=0.05)
            with torch.no_grad():
                table.weight[0].zero_()

    def item_vectors(self) -> torch.Tensor:
        """Vectors of every item, (n_items + 1, dim); row 0 is padding."""
        categories = self.item_categories
        category_sum = self.category_embedding(categories).sum(dim=1)
        category_count = (categories > 0).sum(dim=1, keepdim=True).clamp(min=1)
        vectors = self.item_embedding.weight + category_sum / category_count
        vectors = vectors + self.year_embedding(self.item_year_buckets)
        return vectors * (torch.arange(len(vectors), device=vectors.device) > 0).unsqueeze(1)

    def user_vectors(self, users: torch.Tensor, history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Vectors of users from their ids and histories (B, L), given all item vectors."""
        history_vectors = items[history]  # (B, L, dim)
        present = history > 0
        logits = self.position_logits.unsqueeze(0).expand_as(history).masked_fill(~present, float("-inf"))
        weights = torch.softmax(logits, dim=1).nan_to_num(0.0)  # users with no history pool to zeros
        pooled = (weights.unsqueeze(2) * history_vectors).sum(dim=1)
        newest = history_vectors[:, -1]
        return self.user_mlp(torch.cat([pooled, newest, self.user_embedding(users)], dim=1))

    def forward(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Scores of every item for each user, (B, n_items + 1); column 0 is -inf."""
        items = self.item_vectors()
        scores = self.user_vectors(users, history, items) @ items.T
        scores[:, 0] = float("-inf")
        return scores


def model_config(catalog, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "n_items": catalog.n_items,
        "n_users": catalog.n_users,
        "embedding_dim": int(params["embedding_dim"]),
        "history_length": int(params["history_length"]),
        "dropout": float(params["dropout"]),
    }


def build_model(config: dict[str, Any], item_categories: torch.Tensor, item_year_buckets: torch.Tensor) -> TwoTower:
    return TwoTower(config["n_items"], config["n_users"], item_categories, item_year_buckets,
                    config["embedding_dim"], config["history_length"], config["dropout"])


def save_bundle(model: TwoTower, config: dict[str, Any], item_ids: list[str], user_ids: list[str],
                path: Path, extra: dict[str, Any] | None = None) -> None:
    """Save weights, config and id maps in a form that loads without pickle."""
    from pipelines.io import atomic_path

    bundle = {
        "format_version": FORMAT_VERSION,
        "config": config,
        "state_dict": {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()},
        "item_ids": list(item_ids),
        "user_ids": list(user_ids),
        "extra": extra or {},
    }
    with atomic_path(Path(path)) as tmp:
        torch.save(bundle, tmp)


def load_bundle(path: Path) -> tuple[TwoTower, dict[str, Any]]:
    """Load a saved model with weights_only=True; a damaged or foreign file is a RegistryError."""
    path = Path(path)
    if not path.is_file():
        raise RegistryError(f"{path}: model file not found")
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file; all mean "unreadable"
        raise RegistryError(f"{path}: cannot load model ({type(error).__name__}: {error})") from error
    if not isinstance(bundle, dict) or bundle.get("format_version") != FORMAT_VERSION:
        raise RegistryError(f"{path}: not a shoprec model file (format_version {FORMAT_VERSION} expected)")
    state = bundle["state_dict"]
    model = build_model(bundle["config"], state["item_categories"], state["item_year_buckets"])
    model.load_state_dict(state)
    model.eval()
    return model, bundle
