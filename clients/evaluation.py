"""Local evaluation: full ranking of the platform's catalogue for each user (DESIGN.md protocol)."""

from __future__ import annotations

from clients.dataset import PlatformData
from shared.metrics import ranking_metrics, target_ranks
from shared.model import Recommender


def evaluate_split(
    rec: Recommender, data: PlatformData, split: str, users: list[int] | None = None
) -> dict[str, float]:
    """Recall@10/20, NDCG@10/20, MRR on ``split`` ("validation" or "test"), history excluded."""
    users = list(range(data.num_users)) if users is None else users
    pairs = [data.split(u, split) for u in users]
    histories = [h for h, _ in pairs]
    targets = [t for _, t in pairs]
    item_vectors = rec.encode_items(data.item_texts)
    ranks: list[int] = []
    chunk = 512
    for start in range(0, len(users), chunk):
        part = histories[start : start + chunk]
        scores = rec.encode_users([data.history_text(h) for h in part]) @ item_vectors.T
        ranks += target_ranks(scores, targets[start : start + chunk], part)
    return {**ranking_metrics(ranks), "users": float(len(users))}
