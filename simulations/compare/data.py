"""The platforms a comparison runs on, their evaluation slices, and the pooled (centralized) data."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from clients.scorer.new_items import share_cutoff, training_before
from shared.config import FedxrecConfig
from shared.data import PlatformData, load_platform
from shared.metrics import ranking_metrics
from simulations.compare.plan import (
    COLD_ITEM_MAX_TRAINING,
    COLD_USER_MAX_INTERACTIONS,
    NEW_ITEM_SHARE,
)
from simulations.data.partition import prepare_platforms


def load_platforms(cfg: FedxrecConfig, root: Path) -> list[PlatformData]:
    names = prepare_platforms(cfg.data, root)
    return [
        load_platform(root / n, n, min_user_interactions=cfg.data.min_user_interactions)
        for n in names
    ]


def first_seen(data: PlatformData) -> list[float]:
    """Each item's first interaction time on the platform, all splits (inf: never seen)."""
    first = [math.inf] * len(data.items)
    for seq, times in zip(data.sequences, data.times or [], strict=False):
        for item, t in zip(seq, times, strict=True):
            first[item] = min(first[item], t)
    return first


def new_item_cutoff(data: PlatformData) -> float | None:
    """The time after which the platform's newest NEW_ITEM_SHARE of items were first seen
    (None without timestamps, or when every item appeared at once)."""
    if not data.times:
        return None
    return share_cutoff([t for t in first_seen(data) if math.isfinite(t)], NEW_ITEM_SHARE)


# Each user's training sequence cut to the interactions before a time: what the site's counts
# held on that day (the same cut as the time-split validation world's).
counted_before = training_before


def platform_slices(data: PlatformData) -> dict[str, list[int]]:
    """Users of each evaluation slice (test split).

    cold_users: at most 5 interactions on this platform, all splits counted.
    cold_items: the test item has at most 5 interactions in the training sequences of all users.
    new_items: the test item was first seen (by anyone, in any split) at or after the platform's
    new-item cut-off (``new_item_cutoff``); such an item has no interaction before it, and the
    slice is ranked with counts from before it (``counted_before``). Empty without timestamps.
    """
    counts = data.train_item_counts()
    cutoff = new_item_cutoff(data)
    first = first_seen(data) if cutoff is not None else []
    return {
        "all": list(range(data.num_users)),
        "cold_users": [
            u for u in range(data.num_users) if len(data.sequences[u]) <= COLD_USER_MAX_INTERACTIONS
        ],
        "cold_items": [
            u
            for u in range(data.num_users)
            if counts[data.split(u, "test")[1]] <= COLD_ITEM_MAX_TRAINING
        ],
        "new_items": []
        if cutoff is None
        else [u for u in range(data.num_users) if first[data.split(u, "test")[1]] >= cutoff],
    }


def pool_platforms(platforms: list[PlatformData], name: str = "pooled") -> PlatformData:
    """All platforms' users and catalogues in one place (the centralized reference).

    IDs are prefixed with the platform so that two platforms' "u1" stay two users.
    """
    items, users, sequences, times = [], [], [], []
    for data in platforms:
        offset = len(items)
        items += [dataclasses.replace(i, item_id=f"{data.name}/{i.item_id}") for i in data.items]
        users += [f"{data.name}/{u}" for u in data.users]
        sequences += [[offset + i for i in seq] for seq in data.sequences]
        times += data.times or [[0.0] * len(seq) for seq in data.sequences]
    return PlatformData(name=name, items=items, users=users, sequences=sequences, times=times)


def apart_metrics(ranked: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    """Metrics of slices whose users were ranked on their own (each slice's ranks, in order)."""
    return {
        name: {**(ranking_metrics(ranks) if ranks else {}), "users": len(ranks)}
        for name, ranks in ranked.items()
    }


def slice_metrics(ranks: list[int], slices: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    """Metrics of each slice; a slice with no user has only ``users: 0``."""
    out = {}
    for name, users in slices.items():
        part = [ranks[u] for u in users]
        out[name] = {**(ranking_metrics(part) if part else {}), "users": len(part)}
    return out
