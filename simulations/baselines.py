"""Non-neural baselines, scored under exactly the protocol the recommender is (README "Results").

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

from clients.scorer.collaborative import CollaborativeIndex, build_collaborative_index
from clients.scorer.ease import history_matrix
from shared.data import PlatformData
from shared.metrics import target_ranks

Counted = list[list[int]] | None  # the sequences the statistics count (None: the training ones)
Scorer = Callable[[PlatformData, str, list[int], Counted], torch.Tensor]


def _counted(data: PlatformData, counted: Counted) -> list[list[int]]:
    return [data.train_sequence(u) for u in range(data.num_users)] if counted is None else counted


def training_matrix(data: PlatformData, counted: Counted = None) -> torch.Tensor:
    """Binary [users, items]: 1 where the item is in the user's training sequence."""
    return history_matrix(_counted(data, counted), len(data.items))


def popularity_scores(
    data: PlatformData, split: str, users: list[int], counted: Counted = None
) -> torch.Tensor:
    """Every user gets the platform's items ordered by how many users trained on them."""
    counts = training_matrix(data, counted).sum(dim=0)
    return counts.unsqueeze(0).expand(len(users), -1).clone()


def local_index(data: PlatformData, counted: Counted = None) -> CollaborativeIndex:
    """The site's collaborative index over every user's training sequence (or ``counted``),
    every neighbour kept (the ItemKNN and EASE baselines are the site-side signals of
    clients/scorer/collaborative.py)."""
    return build_collaborative_index(data, _counted(data, counted), neighbours=len(data.items))


def _histories(data: PlatformData, split: str, users: list[int]) -> list[list[int]]:
    return [data.split(u, split)[0] for u in users]


def itemknn_scores(
    data: PlatformData, split: str, users: list[int], counted: Counted = None
) -> torch.Tensor:
    """ItemKNN (all neighbours): an item's score is the sum of its cosine similarities (of
    co-occurrence in training sequences) to the history's items."""
    return local_index(data, counted).scores(_histories(data, split, users))["itemknn"]


def ease_scores(
    data: PlatformData, split: str, users: list[int], counted: Counted = None
) -> torch.Tensor:
    """EASE (Steck 2019), closed form over the training sequences (above 20k items over the
    platform's most-interacted items only: clients/scorer/ease.py)."""
    index = local_index(data, counted)
    if index.ease is None:
        raise ValueError(f"platform '{data.name}' has no items for EASE")
    return index.scores(_histories(data, split, users))["ease"]


BASELINES: dict[str, Scorer] = {
    "popularity": popularity_scores,
    "itemknn": itemknn_scores,
    "ease": ease_scores,
}


def baseline_ranks(
    scorer: Scorer,
    data: PlatformData,
    split: str,
    users: list[int] | None = None,
    counted: Counted = None,
) -> list[int]:
    """1-based target ranks of ``users`` (default all) on ``split``, ranked like every method,
    the item statistics counting ``counted`` (default every user's training sequence)."""
    users = list(range(data.num_users)) if users is None else users
    if not users:
        return []
    pairs = [data.split(u, split) for u in users]
    scores = scorer(data, split, users, counted)
    return target_ranks(scores, [t for _, t in pairs], [h for h, _ in pairs])
