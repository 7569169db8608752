"""Local evaluation: full ranking of the platform's catalogue for each user (README "Results")."""

from __future__ import annotations

import torch

from clients.collaborative import CollaborativeIndex, build_collaborative_index
from clients.dataset import PlatformData
from clients.fusion import FIT_USERS, FusionWeights, fit_fusion, fuse, standardised_signals
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
        item_vectors = rec.encode_items(data.item_texts)
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


def training_index(data: PlatformData) -> CollaborativeIndex:
    """The site's collaborative index as evaluation needs it: training sequences only, so no
    validation or test target is ever counted."""
    return build_collaborative_index(data, [data.train_sequence(u) for u in range(data.num_users)])


def hybrid_split_ranks(
    rec: Recommender,
    data: PlatformData,
    local: CollaborativeIndex,
    item_vectors: torch.Tensor | None = None,
    split: str = "test",
) -> tuple[list[int], FusionWeights]:
    """Ranks of the site's final ranking on ``split``: the model fused with ``local``, with
    weights fitted on the validation split (never on ``split``'s targets when it is the test)."""
    if item_vectors is None:
        item_vectors = rec.encode_items(data.item_texts)
    users = range(data.num_users)
    val = [data.split(u, "validation") for u in users]
    val_histories = [h for h, _ in val]
    weights = fit_fusion(
        rec.scores(val_histories[:FIT_USERS], item_vectors),
        local,
        val_histories,
        [t for _, t in val],
    )
    pairs = [data.split(u, split) for u in users]
    histories, targets = [h for h, _ in pairs], [t for _, t in pairs]
    ranks: list[int] = []
    chunk = 1024
    for start in range(0, len(histories), chunk):
        part = histories[start : start + chunk]
        signals = standardised_signals(rec.scores(part, item_vectors), local, part)
        fused = fuse(signals, weights.weights)
        ranks += target_ranks(fused, targets[start : start + chunk], part)
    return ranks, weights
