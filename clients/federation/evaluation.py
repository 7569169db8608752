"""Local evaluation: full ranking of the platform's catalogue for each user (README "Results")."""

from __future__ import annotations

import torch

from shared.data import PlatformData
from shared.metrics import ranking_metrics, target_ranks
from shared.model import Recommender


def split_ranks(
    rec: Recommender,
    data: PlatformData,
    split: str,
    users: list[int] | None = None,
    item_vectors: torch.Tensor | None = None,
) -> list[int]:
    """1-based rank of each user's ``split`` target over the whole catalogue, history excluded.

    ``item_vectors`` lets a caller that ranks several splits or user slices encode the catalogue once.
    """
    users = list(range(data.num_users)) if users is None else users
    pairs = [data.split(u, split) for u in users]
    histories = [h for h, _ in pairs]
    targets = [t for _, t in pairs]
    if item_vectors is None:
        item_vectors = rec.catalogue_vectors(data.item_texts)
    ranks: list[int] = []
    chunk = 512
    for start in range(0, len(users), chunk):
        part = histories[start : start + chunk]
        ranks += target_ranks(rec.scores(part, item_vectors), targets[start : start + chunk], part)
    return ranks


def evaluate_split(
    rec: Recommender,
    data: PlatformData,
    split: str,
    users: list[int] | None = None,
    item_vectors: torch.Tensor | None = None,
) -> dict[str, float]:
    """Recall@10/20, NDCG@10/20, MRR on ``split`` ("validation" or "test"), history excluded."""
    ranks = split_ranks(rec, data, split, users, item_vectors)
    return {**ranking_metrics(ranks), "users": float(len(ranks))}
