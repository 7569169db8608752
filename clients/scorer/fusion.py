"""A site's final ranking: the federated model's score fused with the site's own collaborative
signals (clients/scorer/collaborative.py), with weights fitted on the site's own validation split.

Each signal is standardised per user over the candidate items (the history left out), then the
fused score is Σ weight · z. A signal that knows nothing of an item (no interaction on the site:
a new item) or of a user (no known item in the history) is replaced by the model's own z-score for
it, so a new item is ranked by the model instead of being buried under zeros, and a new user gets
the model's ranking.

A count signal's say about an item grows with the evidence the site has for it: with shrinkage
κ, its z-score for an item with n interactions is blended with the model's as n / (n + κ), so an
item with a few interactions is ranked mostly by the model (κ = 0: every known item by the counts).

The weights and κ are fitted by NDCG@10 on the validation split (histories are the training
sequences, targets the validation items, and the collaborative index counts only the training
sequences; nothing here ever sees a test target): for each κ of KAPPAS an ascent over the simplex
that moves weight between two signals at a time, coarse to fine (``simplex_ascent``; the 0.1
grid it replaces is kept as the reference it is checked against). On a small site the best fit is
mostly the luck of a few hundred validation users, so a mix is kept only when it beats the best
single signal (κ = 0) by at least ``min_z`` standard errors of its paired per-user gain; otherwise
that signal ranks alone (the fusion does not do worse than the best thing it fuses because it
fitted noise).

New items (clients/scorer/new_items.py): for a user whose most recent item the counts do not know
(someone following what is new), the count signals' fallback for an item they know nothing of
may be the model's z-score scaled and shifted onto their scale, a·z + β, instead of z; fitted on
a time-split validation world and off unless it clearly helps there. The weights dict carries it
(SCALE and OFFSET) so that every ranking path that fuses applies it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from clients.scorer.collaborative import CollaborativeIndex, at_rows, build_collaborative_index
from clients.scorer.ease import history_matrix
from clients.scorer.private_counts import CountPrivacy
from shared.data import PlatformData
from shared.metrics import paired_gain, ranking_metrics, target_ranks, user_ndcg
from shared.model import Recommender

GRID_STEP = 0.1
ASCENT_STEPS = (0.2, 0.1, 0.05)  # the fit's moves of weight between two signals, coarse to fine
# Shrinkage tried for the count signals: an item's say grows as n / (n + κ) with its
# interactions n (0: every known item fully; docs/experiments/fusion-fit.md)
KAPPAS = (0.0, 3.0, 10.0, 30.0)
FIT_USERS = 3000  # validation users the weights are fitted on (the first ones: a fixed sample)
MIN_Z = 1.645  # a mix must beat the best single signal by this many standard errors (one-sided 5 %)
# the new-item fallback a·z + β in a FusionWeights' weights (absent: off, the model's z as is)
SCALE, OFFSET = "new_items_scale", "new_items_offset"
FALLBACK = (SCALE, OFFSET)
# standardised_signals' [users, items] entry: where the fallback applies (not a signal)
FALLBACK_SHARE = "new_items_share"


@dataclass(frozen=True)
class FusionWeights:
    # "model" and each collaborative signal, summing to 1; with the new-item fallback on, also
    # SCALE and OFFSET
    weights: dict[str, float]
    validation_ndcg: float  # NDCG@10 of these weights on the validation users they were fit on
    model_only_ndcg: float  # the model alone on the same users
    users: int
    mix_gain_z: float = math.inf  # the best mix's gain over the best single signal, in SEs
    kappa: float = 0.0  # the count signals' shrinkage towards the model (standardised_signals)
    # a user with no known item: the model's prior's share, the rest the site's popularity
    new_user_model: float = 0.5
    # how the new-item fallback was chosen (clients/scorer/new_items.py; empty: not fitted)
    new_items_fit: dict[str, float | int | str] = field(default_factory=dict)

    @property
    def mix(self) -> dict[str, float]:
        """The signals' weights (the fallback's parameters left out)."""
        return {k: v for k, v in self.weights.items() if k not in FALLBACK}

    @property
    def fallback(self) -> tuple[float, float] | None:
        """The new-item fallback's (a, β), or None: off."""
        if SCALE not in self.weights:
            return None
        return self.weights[SCALE], self.weights.get(OFFSET, 0.0)

    def to_dict(self) -> dict[str, object]:
        fallback = self.fallback
        new_items: dict[str, object] = {"fallback": "off" if fallback is None else "scaled"}
        if fallback is not None:
            new_items.update(scale=fallback[0], offset=fallback[1])
        return {
            "weights": {k: round(v, 4) for k, v in self.mix.items()},
            "validation_ndcg@10": round(self.validation_ndcg, 6),
            "model_only_validation_ndcg@10": round(self.model_only_ndcg, 6),
            "fit_on_users": self.users,
            "mix_gain_z": round(self.mix_gain_z, 3) if math.isfinite(self.mix_gain_z) else None,
            "kappa": self.kappa,
            "new_user_model_weight": self.new_user_model,
            "new_items": {**new_items, **self.new_items_fit},
        }


def standardise(scores: torch.Tensor, excluded: torch.Tensor) -> torch.Tensor:
    """Per-user z-scores over the candidate items (``excluded`` [users, items] left out)."""
    candidates = (~excluded).float()
    count = candidates.sum(1, keepdim=True).clamp(min=1.0)
    mean = (scores * candidates).sum(1, keepdim=True) / count
    var = (((scores - mean) * candidates) ** 2).sum(1, keepdim=True) / count
    return (scores - mean) / var.sqrt().clamp(min=1e-6)


def exclusion_mask(histories: Sequence[Sequence[int]], items: int) -> torch.Tensor:
    return history_matrix(histories, items, torch.bool)


def standardised_signals(
    model_scores: torch.Tensor,
    local: CollaborativeIndex,
    histories: Sequence[Sequence[int]],
    kappa: float = 0.0,
    columns: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """z-scores of the model and of each local signal, unknown items and users falling back to
    the model's z-score. With ``kappa`` > 0 a signal's z-score for an item with n interactions
    is blended with the model's as n / (n + kappa): the fewer interactions the site has seen,
    the more the model ranks the item. The FALLBACK_SHARE entry is where the new-item fallback
    applies (``fuse``): the items the counts know nothing of, for a user whose most recent item
    they do not know.

    With ``columns`` (catalogue rows; ``model_scores`` is then [users, len(columns)]) every
    signal is taken at those rows only and standardised over them: the two-stage ranking's
    candidates (clients/scorer/candidates.py), equal to the full ranking's when they are every
    row."""
    width = model_scores.shape[1]  # the catalogue may have grown since the counts were built
    if columns is None:
        excluded = exclusion_mask(histories, width)
    else:
        excluded = torch.stack(
            [torch.isin(columns, torch.as_tensor(list(h), dtype=torch.long)) for h in histories]
        )
    model_z = standardise(model_scores.float().cpu(), excluded)
    all_counts = local.counts.float().clamp(min=0.0)
    counts = _padded(all_counts, width) if columns is None else at_rows(all_counts, columns)
    evidence = counts / (counts + kappa) if kappa > 0 else (counts > 0).float()
    local_histories = [[r for r in h if r < local.items] for h in histories]
    # a user the counts know something of: a history item with an interaction on the site
    if columns is None:
        known_user = (excluded & (counts > 0).unsqueeze(0)).any(1, keepdim=True)
    else:
        history = exclusion_mask(local_histories, local.items)
        known_user = (history & (all_counts > 0).unsqueeze(0)).any(1, keepdim=True)
    say = evidence.unsqueeze(0) * known_user.float()  # [users, items]: the signal's share
    # a user whose latest item the counts do not know follows what is new (its next item is
    # more often unknown too: docs/experiments/new-items.md)
    latest = torch.as_tensor([h[-1] if h else -1 for h in local_histories])
    on_new = (latest >= 0) & (at_rows(all_counts, latest.clamp(min=0)) <= 0)
    unknown = (counts <= 0).unsqueeze(0) & known_user & on_new.unsqueeze(1)
    out = {"model": model_z, FALLBACK_SHARE: unknown.float()}
    for name, scores in local.scores(local_histories, columns).items():
        scores = _padded(scores, width) if columns is None else scores
        out[name] = say * standardise(scores, excluded) + (1.0 - say) * model_z
    return out


def _padded(values: torch.Tensor, items: int) -> torch.Tensor:
    """``values`` [..., n] with zeros for the items added after it was built (the counts know
    nothing of them: their say is 0, so they are ranked by the model)."""
    extra = items - values.shape[-1]
    return torch.nn.functional.pad(values, (0, extra)) if extra > 0 else values


def fuse(signals: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Σ weight · z, with the new-item fallback a·z + β (when ``weights`` carry it) in place of
    the model's z where the count signals fell back to it (standardised_signals)."""
    total = torch.zeros_like(signals["model"])
    for name, weight in weights.items():
        if weight and name not in FALLBACK:
            total += weight * signals[name]
    if SCALE in weights:
        counts_weight = 1.0 - weights.get("model", 0.0)
        shift = (weights[SCALE] - 1.0) * signals["model"] + weights.get(OFFSET, 0.0)
        total += counts_weight * signals[FALLBACK_SHARE] * shift
    return total


def simplex_grid(names: Sequence[str], step: float = GRID_STEP) -> list[dict[str, float]]:
    """Every mix of ``names`` in steps of ``step`` (the reference the ascent is checked against)."""
    parts = round(1 / step)
    grid = []
    for combo in itertools.product(range(parts + 1), repeat=len(names) - 1):
        if sum(combo) <= parts:
            values = [*combo, parts - sum(combo)]
            grid.append({n: v / parts for n, v in zip(names, values, strict=True)})
    return grid


def simplex_ascent(
    objective: Callable[[dict[str, float]], float], starts: Sequence[dict[str, float]]
) -> tuple[float, dict[str, float]]:
    """The best mix ``objective`` finds by moving weight between two signals at a time, in
    steps of ASCENT_STEPS, from each of ``starts``: a cost of O(signals²) per pass, where the
    grid's grows combinatorially with the number of signals."""
    best_value, best = -math.inf, dict(starts[0])
    for start in starts:
        weights, value = dict(start), objective(start)
        for step in ASCENT_STEPS:
            moved = True
            while moved:
                moved = False
                for up, down in itertools.permutations(weights, 2):
                    if weights[down] < step - 1e-9:
                        continue
                    tried = dict(weights)
                    tried[up] = round(tried[up] + step, 6)
                    tried[down] = round(tried[down] - step, 6)
                    tried_value = objective(tried)
                    if tried_value > value:
                        weights, value, moved = tried, tried_value, True
        if value > best_value:
            best_value, best = value, weights
    return best_value, best


def fused_ranker(
    histories: Sequence[Sequence[int]], targets: Sequence[int], items: int
) -> Callable[[dict[str, torch.Tensor], dict[str, float]], list[int]]:
    """The targets' ranks under ``fuse(signals, weights)``: target_ranks' rule vectorised for
    the fits (the history but the target excluded, ties counting against the target)."""
    rows, target = torch.arange(len(targets)), torch.as_tensor(list(targets))
    excluded = exclusion_mask(histories, items)
    excluded[rows, target] = False

    def ranks(signals: dict[str, torch.Tensor], weights: dict[str, float]) -> list[int]:
        fused = fuse(signals, weights)
        return ((fused >= fused[rows, target].unsqueeze(1)) & ~excluded).sum(1).tolist()

    return ranks


def fit_fusion(
    model_scores: torch.Tensor,
    local: CollaborativeIndex,
    histories: Sequence[Sequence[int]],
    targets: Sequence[int],
    min_z: float = MIN_Z,
    kappas: Sequence[float] = KAPPAS,
) -> FusionWeights:
    """The weights and shrinkage κ with the best NDCG@10 on these validation users, if they
    beat the best single signal (κ = 0) by ``min_z`` standard errors of the paired gain, else
    that signal alone."""
    histories, targets = list(histories)[:FIT_USERS], list(targets)[:FIT_USERS]
    scores = model_scores[: len(histories)]
    names = ["model", *local.signals]
    ranks = fused_ranker(histories, targets, local.items)

    def ndcg(signals: dict[str, torch.Tensor], weights: dict[str, float]) -> float:
        return ranking_metrics(ranks(signals, weights))["ndcg@10"]

    singles = [{n: float(n == name) for n in names} for name in names]
    exact = standardised_signals(scores, local, histories)
    single_ndcg, single = max(((ndcg(exact, w), w) for w in singles), key=lambda p: p[0])
    best_ndcg, best, best_kappa = single_ndcg, single, 0.0
    for kappa in kappas:
        signals = exact if kappa == 0 else standardised_signals(scores, local, histories, kappa)
        value, weights = simplex_ascent(lambda w, s=signals: ndcg(s, w), [single, *singles])
        if value > best_ndcg:
            best_ndcg, best, best_kappa = value, weights, float(kappa)
    z = math.inf
    if best is not single:
        chosen = standardised_signals(scores, local, histories, best_kappa)
        gain, se = paired_gain(user_ndcg(ranks(chosen, best)), user_ndcg(ranks(exact, single)))
        z = gain / se if se > 0 else (math.inf if gain > 0 else 0.0)
        if z < min_z:
            best, best_ndcg, best_kappa = single, single_ndcg, 0.0
    model_only = ndcg(exact, {"model": 1.0})
    return FusionWeights(best, best_ndcg, model_only, len(histories), z, best_kappa)


def new_user_scores(
    prior_scores: torch.Tensor,
    local: CollaborativeIndex,
    model_weight: float,
    columns: torch.Tensor | None = None,
) -> torch.Tensor:
    """[items] scores for a user the site knows nothing of: the model's prior (its score for an
    empty history) and the site's recency-weighted popularity, standardised, mixed (over the
    catalogue rows ``columns`` only, when given: ``prior_scores`` are theirs)."""
    items = prior_scores.shape[-1]
    nothing = torch.zeros(1, items, dtype=torch.bool)
    prior_z = standardise(prior_scores.float().cpu().reshape(1, -1), nothing)[0]
    popularity = local.popularity.float()
    popularity = _padded(popularity, items) if columns is None else at_rows(popularity, columns)
    popularity_z = standardise(popularity.reshape(1, -1), nothing)[0]
    return model_weight * prior_z + (1.0 - model_weight) * popularity_z


def fit_new_user_blend(
    prior_scores: torch.Tensor,
    local: CollaborativeIndex,
    targets: Sequence[int],
    min_z: float = MIN_Z,
) -> float:
    """The model prior's share for new users with the best NDCG@10 on these validation targets,
    each ranked as if its user had no history (steps of 0.1; ties keep the smaller share), if
    it beats popularity alone by ``min_z`` standard errors of the paired gain, else 0."""
    target = torch.as_tensor(list(targets)[:FIT_USERS])

    def ranks(weight: float) -> list[int]:
        scores = new_user_scores(prior_scores, local, weight)
        return (scores.unsqueeze(0) >= scores[target].unsqueeze(1)).sum(1).tolist()

    best = max(
        (step / 10 for step in range(11)), key=lambda w: ranking_metrics(ranks(w))["ndcg@10"]
    )
    if best == 0.0:
        return 0.0
    gain, se = paired_gain(user_ndcg(ranks(best)), user_ndcg(ranks(0.0)))
    return best if se > 0 and gain / se >= min_z else 0.0


def training_index(
    data: PlatformData,
    privacy: CountPrivacy | None = None,
    seed: int | None = None,
    sequences: Sequence[Sequence[int]] | None = None,
) -> CollaborativeIndex:
    """The site's collaborative index as evaluation needs it: training sequences only (or a part
    of each, ``sequences``), so no validation or test target is ever counted (with ``privacy``:
    user-level DP counts, noise drawn with ``seed``)."""
    if sequences is None:
        sequences = [data.train_sequence(u) for u in range(data.num_users)]
    return build_collaborative_index(data, sequences, privacy=privacy, seed=seed)


def fit_site_fusion(
    rec: Recommender,
    data: PlatformData,
    local: CollaborativeIndex,
    item_vectors: torch.Tensor,
    build: Callable[[Sequence[Sequence[int]]], CollaborativeIndex] | None = None,
) -> FusionWeights:
    """The site's fusion weights, fitted on its validation split, and the new-item fallback,
    fitted on its time-split validation world, whose counts ``build`` makes from the training
    interactions it is given (default: exact counts). Never a test target."""
    # (new_items builds on this module, so it is imported where it is used)
    from clients.scorer.new_items import fit_new_item_fallback, time_split_world

    val = [data.split(u, "validation") for u in range(min(data.num_users, FIT_USERS))]
    histories, targets = [h for h, _ in val], [t for _, t in val]
    scores = rec.scores(histories, item_vectors)
    weights = fit_fusion(scores, local, histories, targets)
    if build is None:
        build = lambda sequences: training_index(data, sequences=sequences)  # noqa: E731
    world = time_split_world(data, build, users=FIT_USERS)
    return fit_new_item_fallback(scores, weights, world, local, histories, targets)


def fused_split_ranks(
    rec: Recommender,
    data: PlatformData,
    local: CollaborativeIndex,
    item_vectors: torch.Tensor,
    weights: FusionWeights,
    split: str = "test",
    users: Sequence[int] | None = None,
) -> list[int]:
    """Ranks of ``users`` (default all) on ``split`` by the model fused with ``local``."""
    users = range(data.num_users) if users is None else users
    pairs = [data.split(u, split) for u in users]
    histories, targets = [h for h, _ in pairs], [t for _, t in pairs]
    ranks: list[int] = []
    chunk = 1024
    for start in range(0, len(histories), chunk):
        part = histories[start : start + chunk]
        signals = standardised_signals(rec.scores(part, item_vectors), local, part, weights.kappa)
        fused = fuse(signals, weights.weights)
        ranks += target_ranks(fused, targets[start : start + chunk], part)
    return ranks


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
    weights = fit_site_fusion(rec, data, local, item_vectors)
    return fused_split_ranks(rec, data, local, item_vectors, weights, split), weights
