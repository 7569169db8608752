"""What a comparison keeps of each tested model: metrics and ranks, with its "+ local" twin."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from simulations.compare.data import apart_metrics, slice_metrics
from simulations.compare.records import RoundRecord

ROUND_FIELDS = ("validation_ndcg", "epsilon", "noise_multiplier", "delta", "loss")


@dataclass
class Tested:
    """Test metrics and ranks per platform, of a model and of its "+ local" fusion."""

    test: dict[str, Any] = field(default_factory=dict)
    ranks: dict[str, list[int]] = field(default_factory=dict)
    hybrid_test: dict[str, Any] = field(default_factory=dict)
    hybrid_ranks: dict[str, list[int]] = field(default_factory=dict)
    fusion: dict[str, Any] = field(default_factory=dict)  # platform -> fitted fusion weights

    def add(self, name: str, ranks: list[int], slices: dict[str, list[int]]) -> None:
        self.ranks[name], self.test[name] = ranks, slice_metrics(ranks, slices)

    def add_hybrid(
        self,
        name: str,
        ranks: list[int],
        slices: dict[str, list[int]],
        fusion: dict[str, Any],
        ranked_apart: dict[str, list[int]] | None = None,
    ) -> None:
        """``ranked_apart``: slices ranked otherwise than ``ranks`` (the new-item slice, with
        the counts of its cut-off day), the ranks of their users in the slice's order."""
        self.hybrid_ranks[name] = ranks
        self.hybrid_test[name] = slice_metrics(ranks, slices)
        self.hybrid_test[name].update(apart_metrics(ranked_apart or {}))
        self.fusion[name] = fusion

    def update(self, other: Tested) -> None:
        for field_name in ("test", "ranks", "hybrid_test", "hybrid_ranks", "fusion"):
            getattr(self, field_name).update(getattr(other, field_name))


def merge_rounds(per_platform: list[list[RoundRecord]]) -> list[RoundRecord]:
    """Per-round records of several single-platform runs as one record per round."""
    merged: dict[int, RoundRecord] = {}
    for rounds in per_platform:
        for entry in rounds:
            target = merged.setdefault(entry.round, RoundRecord(entry.round))
            for name in ROUND_FIELDS:
                getattr(target, name).update(getattr(entry, name))
    return [merged[r] for r in sorted(merged)]
