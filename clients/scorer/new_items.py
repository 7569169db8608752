"""New items in the site's final ranking: a time-split validation world to fit their fallback on.

The counts know nothing of an item first seen after they were built, so the fusion ranks it by
the model (clients/scorer/fusion.py). On the model's scale it does not compete with the count
signals' heavy-tailed z-scores, so the fusion may put it on the count signals' scale instead
(``Fallback``). Whether it should is a fitted choice, and the normal validation split cannot make
it: its counts hold every training interaction, so almost no validation target is unknown to
them.

The time-split world is the validation split as it looked to counts built earlier: the
validation cut-off is the time by which (1 - NEW_ITEM_SHARE) of the items seen in the training
sequences had first appeared there, the counts hold the training interactions before it, and the
validation users (history: the training sequence; target: the validation item) are ranked with
those counts. It reads training interactions and validation targets only, never a test target.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from clients.scorer.collaborative import CollaborativeIndex
from clients.scorer.fusion import (
    MIN_Z,
    OFFSET,
    SCALE,
    FusionWeights,
    fused_ranker,
    standardised_signals,
)
from shared.data import PlatformData
from shared.metrics import paired_gain, ranking_metrics, user_ndcg

# the share of items first seen after the validation cut-off (and after the comparison's
# new-item cut-off, simulations/compare/data.py)
NEW_ITEM_SHARE = 0.2
# the fallback a·z + β tried (a = 1, β = 0 is "off"); on the ML-100K demo sites the world's
# best lay within these (docs/experiments/new-items.md)
SCALES = (1.0, 2.0, 3.0, 5.0)
OFFSETS = (0.0, 1.0, 2.0, 3.0)
# the most the fallback may lose on the normal validation split (whose counts know nearly
# every target), relative to off
MAX_VALIDATION_LOSS = 0.01


@dataclass(frozen=True)
class TimeSplitWorld:
    cutoff: float  # counts hold the training interactions before it
    index: CollaborativeIndex  # those counts
    histories: list[list[int]]  # each validation user's training sequence (in full)
    targets: list[int]  # their validation items
    new: list[bool]  # the target is unknown to these counts (first seen at or after the cut-off)


def training_first_seen(data: PlatformData) -> dict[int, float]:
    """Each item's first interaction time in the training sequences (items never there: absent)."""
    first: dict[int, float] = {}
    for u, times in enumerate(data.times or []):
        for item, t in zip(data.train_sequence(u), times, strict=False):
            first[item] = min(first.get(item, math.inf), t)
    return first


def share_cutoff(first_times: Sequence[float], share: float = NEW_ITEM_SHARE) -> float | None:
    """The time after which the newest ``share`` of items first appeared, given each item's
    first time (None when there are none, or when they all appeared at once)."""
    seen = sorted(first_times)
    if not seen or seen[0] == seen[-1]:
        return None
    cutoff = seen[min(len(seen) - 1, math.floor(len(seen) * (1 - share)))]
    return cutoff if cutoff > seen[0] else None


def validation_cutoff(data: PlatformData, share: float = NEW_ITEM_SHARE) -> float | None:
    """The time after which the newest ``share`` of the training sequences' items first appeared
    (None without timestamps, or when they all appeared at once)."""
    return share_cutoff(list(training_first_seen(data).values()), share)


def training_before(data: PlatformData, cutoff: float) -> list[list[int]]:
    """Each user's training sequence, cut to the interactions before ``cutoff``."""
    out = []
    for u in range(data.num_users):
        times = (data.times or [])[u] if data.times else []
        out.append([i for i, t in zip(data.train_sequence(u), times, strict=False) if t < cutoff])
    return out


def time_split_world(
    data: PlatformData,
    build: Callable[[Sequence[Sequence[int]]], CollaborativeIndex],
    users: int | None = None,
) -> TimeSplitWorld | None:
    """The validation split of the first ``users`` users ranked with counts from before the
    validation cut-off, ``build`` making the index of the sequences it is given (None: no
    cut-off, so no world)."""
    cutoff = validation_cutoff(data)
    if cutoff is None:
        return None
    index = build(training_before(data, cutoff))
    pairs = [
        data.split(u, "validation") for u in range(min(users or data.num_users, data.num_users))
    ]
    targets = [t for _, t in pairs]
    known = index.counts > 0
    return TimeSplitWorld(
        cutoff, index, [h for h, _ in pairs], targets, [not bool(known[t]) for t in targets]
    )


def fit_new_item_fallback(
    model_scores: torch.Tensor,
    fit: FusionWeights,
    world: TimeSplitWorld | None,
    local: CollaborativeIndex,
    histories: Sequence[Sequence[int]],
    targets: Sequence[int],
    min_z: float = MIN_Z,
) -> FusionWeights:
    """``fit`` with the new-item fallback a·z + β (SCALES × OFFSETS) that ranks the time-split
    world's validation users (all of them: the new-item ones against the rest) best, if it
    beats off there by ``min_z`` standard errors of the paired per-user gain and loses at most
    MAX_VALIDATION_LOSS on the normal validation split (``local``, ``histories``, ``targets``:
    the split ``fit`` was fitted on); else ``fit`` as it is (off). ``model_scores`` are the
    model's for those validation users (the world's users are the first of them)."""
    if world is None:
        return dataclasses.replace(fit, new_items_fit={"not_fitted": "no time-split world"})
    if fit.weights.get("model", 0.0) >= 1.0:  # the counts have no say: nothing falls back
        return dataclasses.replace(fit, new_items_fit={"not_fitted": "the model ranks alone"})
    users = len(world.targets)
    scores = model_scores[:users]
    world_signals = standardised_signals(scores, world.index, world.histories, fit.kappa)
    world_ranks = fused_ranker(world.histories, world.targets, world.index.items)
    val_histories, val_targets = list(histories)[: len(model_scores)], list(targets)
    val_signals = standardised_signals(model_scores, local, val_histories, fit.kappa)
    val_ranks = fused_ranker(val_histories, val_targets[: len(val_histories)], local.items)

    def ndcg(ranks: list[int]) -> float:
        return ranking_metrics(ranks)["ndcg@10"]

    off = world_ranks(world_signals, fit.weights)
    floor = (1.0 - MAX_VALIDATION_LOSS) * ndcg(val_ranks(val_signals, fit.weights))
    best_value, best, best_ranks = -math.inf, None, off
    for scale in SCALES:
        for offset in OFFSETS:
            if scale == 1.0 and offset == 0.0:
                continue  # off
            weights = {**fit.weights, SCALE: scale, OFFSET: offset}
            ranks = world_ranks(world_signals, weights)
            if ndcg(ranks) > best_value and ndcg(val_ranks(val_signals, weights)) >= floor:
                best_value, best, best_ranks = ndcg(ranks), weights, ranks
    gain, se = paired_gain(user_ndcg(best_ranks), user_ndcg(off))
    z = gain / se if se > 0 else (math.inf if gain > 0 else 0.0)
    report: dict[str, float | int | str] = {
        "time_split_cutoff": world.cutoff,
        "time_split_users": users,
        "time_split_new_targets": sum(world.new),
        "time_split_off_ndcg@10": round(ndcg(off), 6),
    }
    if best is None:  # every fallback lost more than allowed on the normal validation split
        return dataclasses.replace(fit, new_items_fit=report)
    report.update(
        {
            "best_scale": best[SCALE],
            "best_offset": best[OFFSET],
            "best_time_split_ndcg@10": round(best_value, 6),
            "best_gain_z": round(z, 3) if math.isfinite(z) else "inf",
        }
    )
    return dataclasses.replace(
        fit, weights=best if z >= min_z else fit.weights, new_items_fit=report
    )
