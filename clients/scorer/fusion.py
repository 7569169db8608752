"""A site's final ranking: the federated model's score fused with the site's own collaborative
signals (clients/scorer/collaborative.py), with weights fitted on the site's own validation split.

Each signal is standardised per user over the candidate items (the history left out), then the
fused score is Σ weight · z. A signal that knows nothing of an item (no interaction on the site:
a new item) or of a user (no known item in the history) is replaced by the model's own z-score for
it, so a new item is ranked by the model instead of being buried under zeros, and a new user gets
the model's ranking.

The weights are a grid over the simplex (steps of 0.1), chosen by NDCG@10 on the validation split:
histories are the training sequences, targets the validation items, and the collaborative index
counts only the training sequences. Nothing here ever sees a test target. On a small site the
best of 286 mixes is mostly the luck of a few hundred validation users, so a mix is kept only
when it beats the best single signal by at least ``min_z`` standard errors of its paired per-user
gain; otherwise that signal ranks alone (the fusion does not do worse than the best thing it
fuses because it fitted noise).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from clients.scorer.collaborative import CollaborativeIndex, build_collaborative_index
from clients.scorer.private_counts import CountPrivacy
from shared.data import PlatformData
from shared.metrics import paired_gain, ranking_metrics, target_ranks, user_ndcg
from shared.model import Recommender

GRID_STEP = 0.1
FIT_USERS = 3000  # validation users the weights are fitted on (the first ones: a fixed sample)
MIN_Z = 1.645  # a mix must beat the best single signal by this many standard errors (one-sided 5 %)


@dataclass(frozen=True)
class FusionWeights:
    weights: dict[str, float]  # "model" and each collaborative signal; they sum to 1
    validation_ndcg: float  # NDCG@10 of these weights on the validation users they were fit on
    model_only_ndcg: float  # the model alone on the same users
    users: int
    mix_gain_z: float = math.inf  # the best mix's gain over the best single signal, in SEs

    def to_dict(self) -> dict[str, object]:
        return {
            "weights": {k: round(v, 4) for k, v in self.weights.items()},
            "validation_ndcg@10": round(self.validation_ndcg, 6),
            "model_only_validation_ndcg@10": round(self.model_only_ndcg, 6),
            "fit_on_users": self.users,
            "mix_gain_z": round(self.mix_gain_z, 3) if math.isfinite(self.mix_gain_z) else None,
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
    min_z: float = MIN_Z,
) -> FusionWeights:
    """The simplex-grid weights with the best NDCG@10 on these validation users if they beat the
    best single signal by ``min_z`` standard errors of the paired gain, else that signal."""
    histories, targets = list(histories)[:FIT_USERS], list(targets)[:FIT_USERS]
    signals = standardised_signals(model_scores[: len(histories)], local, histories)
    names = ["model", *local.signals]
    # target_ranks' rule, vectorised for the grid: the history (but the target) is excluded,
    # ties count against the target.
    rows = torch.arange(len(targets))
    target = torch.as_tensor(targets)
    excluded = exclusion_mask(histories, local.items)
    excluded[rows, target] = False

    def ranks(weights: dict[str, float]) -> list[int]:
        fused = fuse(signals, weights)
        at_least = (fused >= fused[rows, target].unsqueeze(1)) & ~excluded
        return at_least.sum(1).tolist()

    def ndcg(weights: dict[str, float]) -> float:
        return ranking_metrics(ranks(weights))["ndcg@10"]

    grid = simplex_grid(names)
    scored = [(ndcg(w), w) for w in grid]
    best_ndcg, best = max(scored, key=lambda pair: pair[0])  # the first of equals: grid order
    single_ndcg, single = max(
        ((v, w) for v, w in scored if max(w.values()) == 1.0), key=lambda pair: pair[0]
    )
    z = math.inf
    if best is not single:
        gain, se = paired_gain(user_ndcg(ranks(best)), user_ndcg(ranks(single)))
        z = gain / se if se > 0 else (math.inf if gain > 0 else 0.0)
        if z < min_z:
            best, best_ndcg = single, single_ndcg
    return FusionWeights(best, best_ndcg, ndcg({"model": 1.0}), len(histories), z)


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
