"""A site's final ranking: the federated model's score fused with the site's own collaborative
signals (clients/scorer/collaborative.py), with weights fitted on the site's own validation split.

Each signal is standardised per user over the candidate items (the history left out), then the
fused score is Σ weight · z. A signal that knows nothing of an item (no interaction on the site:
a new item) or of a user (no known item in the history) is replaced by the model's own z-score for
it, so a new item is ranked by the model instead of being buried under zeros, and a new user gets
the model's ranking.

The weights are a grid over the simplex (steps of 0.1), chosen by NDCG@10 on the validation split:
histories are the training sequences, targets the validation items, and the collaborative index
counts only the training sequences. Nothing here ever sees a test target.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from clients.scorer.collaborative import CollaborativeIndex, build_collaborative_index
from clients.scorer.private_counts import CountPrivacy
from shared.data import PlatformData
from shared.metrics import ranking_metrics, target_ranks
from shared.model import Recommender

GRID_STEP = 0.1
FIT_USERS = 3000  # validation users the weights are fitted on (the first ones: a fixed sample)


@dataclass(frozen=True)
class FusionWeights:
    weights: dict[str, float]  # "model" and each collaborative signal; they sum to 1
    validation_ndcg: float  # NDCG@10 of these weights on the validation users they were fit on
    model_only_ndcg: float  # the model alone on the same users
    users: int

    def to_dict(self) -> dict[str, object]:
        return {
            "weights": {k: round(v, 4) for k, v in self.weights.items()},
            "validation_ndcg@10": round(self.validation_ndcg, 6),
            "model_only_validation_ndcg@10": round(self.model_only_ndcg, 6),
            "fit_on_users": self.users,
        }


def standardise(scores: torch.Tensor, excluded: torch.Tensor) -> torch.Tensor:
    """Per-user z-scores over the candidate items (``excluded`` [users, items] left out)."""
    candidates = (~excluded).float()
    count = candidates.sum(1, keepdim=True).clamp(min=1.0)
    mean = (scores * candidates).sum(1, keepdim=True) / count
    var = (((scores - mean) * candidates) ** 2).sum(1, keepdim=True) / count
    return (scores - mean) / var.sqrt().clamp(min=1e-6)


def exclusion_mask(histories: Sequence[Sequence[int]], items: int) -> torch.Tensor:
    mask = torch.zeros(len(histories), items, dtype=torch.bool)
    for u, history in enumerate(histories):
        if history:
            mask[u, list(history)] = True
    return mask


def standardised_signals(
    model_scores: torch.Tensor,
    local: CollaborativeIndex,
    histories: Sequence[Sequence[int]],
) -> dict[str, torch.Tensor]:
    """z-scores of the model and of each local signal, unknown items and users falling back to
    the model's z-score."""
    excluded = exclusion_mask(histories, local.items)
    model_z = standardise(model_scores.float().cpu(), excluded)
    known_item = (local.counts > 0).unsqueeze(0)
    known_user = (excluded & known_item).any(1, keepdim=True)
    out = {"model": model_z}
    for name, scores in local.scores(histories).items():
        out[name] = torch.where(known_item & known_user, standardise(scores, excluded), model_z)
    return out


def fuse(signals: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    total = torch.zeros_like(signals["model"])
    for name, weight in weights.items():
        if weight:
            total += weight * signals[name]
    return total


def simplex_grid(names: Sequence[str], step: float = GRID_STEP) -> list[dict[str, float]]:
    parts = round(1 / step)
    grid = []
    for combo in itertools.product(range(parts + 1), repeat=len(names) - 1):
        if sum(combo) <= parts:
            values = [*combo, parts - sum(combo)]
            grid.append({n: v / parts for n, v in zip(names, values, strict=True)})
    return grid


def fit_fusion(
    model_scores: torch.Tensor,
    local: CollaborativeIndex,
    histories: Sequence[Sequence[int]],
    targets: Sequence[int],
) -> FusionWeights:
    """The simplex-grid weights with the best NDCG@10 on these validation users."""
    histories, targets = list(histories)[:FIT_USERS], list(targets)[:FIT_USERS]
    signals = standardised_signals(model_scores[: len(histories)], local, histories)
    names = ["model", *local.signals]
    # target_ranks' rule, vectorised for the grid: the history (but the target) is excluded,
    # ties count against the target.
    rows = torch.arange(len(targets))
    target = torch.as_tensor(targets)
    excluded = exclusion_mask(histories, local.items)
    excluded[rows, target] = False

    def ndcg(weights: dict[str, float]) -> float:
        fused = fuse(signals, weights)
        at_least = (fused >= fused[rows, target].unsqueeze(1)) & ~excluded
        return ranking_metrics(at_least.sum(1).tolist())["ndcg@10"]

    best, best_ndcg = None, -1.0
    for weights in simplex_grid(names):
        value = ndcg(weights)
        if value > best_ndcg + 1e-12:
            best, best_ndcg = weights, value
    assert best is not None
    return FusionWeights(best, best_ndcg, ndcg({"model": 1.0}), len(histories))


def training_index(
    data: PlatformData, privacy: CountPrivacy | None = None, seed: int | None = None
) -> CollaborativeIndex:
    """The site's collaborative index as evaluation needs it: training sequences only, so no
    validation or test target is ever counted (with ``privacy``: user-level DP counts, noise
    drawn with ``seed``)."""
    sequences = [data.train_sequence(u) for u in range(data.num_users)]
    return build_collaborative_index(data, sequences, privacy=privacy, seed=seed)


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
