"""Fresh slots: the last places of a user's top 10 kept for the model's best items among those the
site's counts know little of.

The count signals' z-scores and the model's are on different scales, so an item the counts do not
know, ranked by the model's z-score, never reaches the fused top 10 (docs/experiments/new-items.md),
and lifting its score floods the top of every list. Slots need no common scale: the list is the
fused ranking's first SLATE − r items, then the model's r best *fresh* items (the site counted at
most ``max_count`` interactions of them; not excluded, not in the history) not among those, then
every other item in fused order. What another user loses is bounded by the small NDCG discount of
positions SLATE − r + 1 to SLATE.

``slotted_ranks`` gives a target's rank under that list from two sorts, vectorised over users (the
evaluation's and the fit's rule); ``slotted_order`` builds the list itself (serving). Ties: the
target loses them (as ``shared.metrics.target_ranks``); in a served list, catalogue order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

SLATE = 10  # the list the slots are kept in: its last ``slots`` places


@dataclass(frozen=True)
class FreshSlots:
    slots: int  # r: places SLATE − r + 1 … SLATE go to the model's best fresh items
    max_count: float  # c: an item is fresh when the site counted at most this many interactions

    def fresh(self, counts: torch.Tensor, rows: torch.Tensor | int) -> torch.Tensor:
        """[len(rows)] (or [rows] for an int: every catalogue row) whether each row is fresh; rows
        past the counts (added since they were built) have none."""
        rows = torch.arange(rows) if isinstance(rows, int) else rows.long().cpu()
        known = rows < counts.shape[0]
        seen = torch.zeros(rows.shape, dtype=counts.dtype)
        seen[known] = counts[rows[known]]
        return seen.clamp(min=0) <= self.max_count

    def to_dict(self) -> dict[str, float | int]:
        return {"slots": self.slots, "max_count": self.max_count}


def _positions(keys: torch.Tensor, last: torch.Tensor | None = None) -> torch.Tensor:
    """1-based position of each column in each row sorted by ``keys`` descending, ties in column
    order except that column ``last[u]`` (a target) goes after every column it ties with."""
    users, items = keys.shape
    first = torch.arange(items).expand(users, -1)
    if last is not None:  # the target to the end first: the stable sort keeps it there in ties
        is_last = torch.zeros(users, items, dtype=torch.int8)
        is_last[torch.arange(users), last] = 1
        first = torch.argsort(is_last, dim=1, stable=True)
    second = torch.argsort(keys.gather(1, first), dim=1, descending=True, stable=True)
    order = first.gather(1, second)
    positions = torch.empty_like(order)
    positions.scatter_(1, order, torch.arange(1, items + 1).expand(users, -1).contiguous())
    return positions


def slotted_ranks(
    fused: torch.Tensor,
    model: torch.Tensor,
    fresh: torch.Tensor,
    excluded: torch.Tensor,
    targets: Sequence[int],
    slots: int,
) -> list[int]:
    """1-based rank of each user's target in the slotted list (module docstring): ``fused`` and
    ``model`` [users, items] scores, ``fresh`` [items] or [users, items], ``excluded`` [users,
    items] (the history; a target is never excluded). ``slots`` = 0 is the fused ranking's rank
    (``shared.metrics.target_ranks``)."""
    users = fused.shape[0]
    rows, target = torch.arange(users), torch.as_tensor(list(targets), dtype=torch.long)
    excluded = excluded.clone()
    excluded[rows, target] = False
    fused = fused.detach().float().cpu().masked_fill(excluded, float("-inf"))
    position = _positions(fused, target)
    rank = position[rows, target]
    if slots <= 0:
        return rank.tolist()
    head = SLATE - slots
    # the fresh items not in the fused head compete for the slots by the model's score
    open_ = fresh.expand_as(excluded) & ~excluded & (position > head)
    model = model.detach().float().cpu().masked_fill(~open_, float("-inf"))
    slot_position = _positions(model, target)
    slot = open_ & (slot_position <= slots)
    pushed = (slot & (position > rank.unsqueeze(1))).sum(1)  # slot items moved above it
    ranks = torch.where(
        rank <= head,
        rank,
        torch.where(slot[rows, target], head + slot_position[rows, target], rank + pushed),
    )
    return ranks.tolist()


def slotted_order(
    fused: torch.Tensor, model: torch.Tensor, fresh: torch.Tensor, rows: torch.Tensor, slots: int
) -> torch.Tensor:
    """One user's list: indices into ``fused`` [n] (−inf: never listed), best first, as
    ``slotted_ranks`` ranks them (``model`` [n] scores, ``fresh`` [n], ties in the order of the
    catalogue ``rows`` [n] the entries stand for)."""
    by_row = torch.argsort(rows.cpu(), stable=True)
    fused, model, fresh = fused.float().cpu(), model.float().cpu(), fresh.cpu()
    order = by_row[torch.argsort(fused[by_row], descending=True, stable=True)]
    order = order[torch.isfinite(fused[order])]
    head = order[: max(SLATE - slots, 0)]
    open_ = fresh & torch.isfinite(fused)
    open_[head] = False
    ranked = by_row[torch.argsort(model[by_row], descending=True, stable=True)]
    slot = ranked[open_[ranked]][: max(slots, 0)]
    taken = torch.zeros(len(fused), dtype=torch.bool)
    taken[head] = True
    taken[slot] = True
    return torch.cat([head, slot, order[~taken[order]]])
