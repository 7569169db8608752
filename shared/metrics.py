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


def user_ndcg(ranks: Sequence[int], k: int = 10) -> list[float]:
    """Each user's NDCG@k (one held-out item: 1 / log2(rank + 1) within the top k, else 0)."""
    return [1.0 / math.log2(r + 1) if r <= k else 0.0 for r in ranks]


def paired_gain(new: Sequence[float], old: Sequence[float]) -> tuple[float, float]:
    """Mean per-user gain of ``new`` over ``old`` and its standard error (paired over users)."""
    diffs = [a - b for a, b in zip(new, old, strict=True)]
    if len(diffs) < 2:
        return (diffs[0] if diffs else 0.0), math.inf
    mean = math.fsum(diffs) / len(diffs)
    var = math.fsum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return mean, math.sqrt(var / len(diffs))


def bootstrap_interval(
    values: Sequence[float], *, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """A percentile bootstrap interval of the mean of ``values`` (resampling users)."""
    import numpy as np

    if not len(values):
        return 0.0, 0.0
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))
