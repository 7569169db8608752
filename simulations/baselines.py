"""Non-neural baselines, scored under exactly the protocol the recommender is (DESIGN.md).

Each baseline gives a [users, items] score matrix for one platform and one split; ranks then come
from ``shared.metrics.target_ranks`` like every other method's, so the history is excluded, the
whole catalogue is ranked and ties count against the target.

What they may learn from: item statistics (popularity counts, item–item co-occurrence) come only
from every user's training sequence (``PlatformData.train_sequence``: all but the last two items),
the very data the adapters train on. A user is then scored from the history of the split being
ranked (``PlatformData.split``), as the encoder scores them. No validation or test target ever
enters an item statistic.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from clients.dataset import PlatformData
from shared.metrics import target_ranks

Scorer = Callable[[PlatformData, str, list[int]], torch.Tensor]


def training_matrix(data: PlatformData) -> torch.Tensor:
    """Binary [users, items]: 1 where the item is in the user's training sequence."""
    matrix = torch.zeros(data.num_users, len(data.items))
    for u in range(data.num_users):
        seq = data.train_sequence(u)
        if seq:
            matrix[u, seq] = 1.0
    return matrix


def history_matrix(data: PlatformData, split: str, users: list[int]) -> torch.Tensor:
    """Binary [len(users), items]: the items of each user's history for ``split``."""
    matrix = torch.zeros(len(users), len(data.items))
    for row, u in enumerate(users):
        history, _ = data.split(u, split)
        if history:
            matrix[row, history] = 1.0
    return matrix


def popularity_scores(data: PlatformData, split: str, users: list[int]) -> torch.Tensor:
    """Every user gets the platform's items ordered by how many users trained on them."""
    counts = training_matrix(data).sum(dim=0)
    return counts.unsqueeze(0).expand(len(users), -1).clone()


def item_similarity(data: PlatformData) -> torch.Tensor:
    """Item–item cosine of co-occurrence in training sequences, [items, items], zero diagonal.

    cos(i, j) = |users with i and j| / sqrt(|users with i| · |users with j|).
    """
    x = training_matrix(data)
    co = x.T @ x
    norms = co.diagonal().clamp(min=1.0).sqrt()
    sim = co / norms.unsqueeze(0) / norms.unsqueeze(1)
    sim.fill_diagonal_(0.0)
    return sim


def itemknn_scores(data: PlatformData, split: str, users: list[int]) -> torch.Tensor:
    """ItemKNN (all neighbours): an item's score is the sum of its similarities to the history."""
    return history_matrix(data, split, users) @ item_similarity(data)


BASELINES: dict[str, Scorer] = {"popularity": popularity_scores, "itemknn": itemknn_scores}


def baseline_ranks(
    scorer: Scorer, data: PlatformData, split: str, users: list[int] | None = None
) -> list[int]:
    """1-based target ranks of ``users`` (default all) on ``split``, ranked like every method."""
    users = list(range(data.num_users)) if users is None else users
    pairs = [data.split(u, split) for u in users]
    scores = scorer(data, split, users)
    return target_ranks(scores, [t for _, t in pairs], [h for h, _ in pairs])
