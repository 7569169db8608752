"""Ranking metrics over a full catalogue (README "Results": no sampled negatives)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

METRIC_NAMES = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr")


def target_ranks(
    scores: torch.Tensor, targets: Sequence[int], exclude: Sequence[Iterable[int]]
) -> list[int]:
    """1-based rank of each user's target among all catalogue items, excluded items removed.

    ``scores`` is [users, items]. Ties count against the target (pessimistic), so a model that
    scores everything equally does not look good.
    """
    scores = scores.detach().float().clone()
    for row, items in enumerate(exclude):
        idx = [i for i in items if i != targets[row]]
        if idx:
            scores[row, idx] = float("-inf")
    target_scores = scores[torch.arange(len(targets)), torch.as_tensor(list(targets))]
    ranks = (scores >= target_scores.unsqueeze(1)).sum(dim=1)
    return [int(r) for r in ranks]


def ranking_metrics(ranks: Sequence[int]) -> dict[str, float]:
    """Recall@10/20, NDCG@10/20 and MRR of 1-based target ranks (one held-out item per user)."""
    if not ranks:
        return {name: 0.0 for name in METRIC_NAMES}
    n = len(ranks)
    out = {}
    for k in (10, 20):
        out[f"recall@{k}"] = sum(r <= k for r in ranks) / n
        out[f"ndcg@{k}"] = sum(1.0 / math.log2(r + 1) for r in ranks if r <= k) / n
    out["mrr"] = sum(1.0 / r for r in ranks) / n
    return {name: out[name] for name in METRIC_NAMES}
