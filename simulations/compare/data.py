"""The platforms a comparison runs on, their evaluation slices, and the pooled (centralized) data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from shared.config import FedxrecConfig
from shared.data import PlatformData, load_platform
from shared.metrics import ranking_metrics
from simulations.compare.plan import COLD_ITEM_MAX_TRAINING, COLD_USER_MAX_INTERACTIONS
from simulations.data.partition import prepare_platforms


def load_platforms(cfg: FedxrecConfig, root: Path) -> list[PlatformData]:
    names = prepare_platforms(cfg.data, root)
    return [
        load_platform(root / n, n, min_user_interactions=cfg.data.min_user_interactions)
        for n in names
    ]


def platform_slices(data: PlatformData) -> dict[str, list[int]]:
    """Users of each evaluation slice (test split).

    cold_users: at most 5 interactions on this platform, all splits counted.
    cold_items: the test item has at most 5 interactions in the training sequences of all users.
    """
    counts = data.train_item_counts()
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


def slice_metrics(ranks: list[int], slices: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    """Metrics of each slice; a slice with no user has only ``users: 0``."""
    out = {}
    for name, users in slices.items():
        part = [ranks[u] for u in users]
        out[name] = {**(ranking_metrics(part) if part else {}), "users": len(part)}
    return out
