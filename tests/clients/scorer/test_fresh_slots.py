"""Fresh slots' rank rule against a list built item by item."""

import pytest
import torch

from clients.scorer.fresh_slots import SLATE, FreshSlots, slotted_order, slotted_ranks
from clients.scorer.fusion import exclusion_mask
from shared.metrics import target_ranks


def _brute_list(fused, model, fresh, history, slots):
    """The slotted list of one user, one item at a time."""
    items = [i for i in range(len(fused)) if i not in history]
    by_fused = sorted(items, key=lambda i: -float(fused[i]))
    head = by_fused[: SLATE - slots]
    open_ = [i for i in items if bool(fresh[i]) and i not in head]
    slot = sorted(open_, key=lambda i: -float(model[i]))[:slots]
    return head + slot + [i for i in by_fused if i not in head and i not in slot]


@pytest.mark.parametrize("slots", [0, 1, 2, 3, 10])
@pytest.mark.parametrize("max_count", [0, 5])
def test_the_rank_rule_is_the_brute_force_list(slots, max_count):
    gen = torch.Generator().manual_seed(slots * 10 + max_count)
    users, items = 30, 40
    fused, model = torch.randn(users, items, generator=gen), torch.randn(users, items, generator=gen)
    counts = torch.randint(0, 9, (items,), generator=gen).float()
    fresh = FreshSlots(slots, max_count).fresh(counts, items)
    histories = [torch.randperm(items, generator=gen)[:6].tolist() for _ in range(users)]
    excluded = exclusion_mask(histories, items)
    for target in range(items):
        targets = [target] * users
        got = slotted_ranks(fused, model, fresh, excluded, targets, slots)
        for u in range(users):
            history = [i for i in histories[u] if i != target]
            listed = _brute_list(fused[u], model[u], fresh, history, slots)
            assert got[u] == listed.index(target) + 1
            if target == 0:  # the served order is the same list
                served = fused[u].clone()
                served[history] = float("-inf")
                order = slotted_order(served, model[u], fresh, torch.arange(items), slots)
                assert order.tolist() == listed
    if slots == 0:  # off: the fused ranking's ranks, ties against the target included
        tied = fused.round(decimals=0)
        targets = torch.randint(0, items, (users,), generator=gen).tolist()
        assert slotted_ranks(tied, model, fresh, excluded, targets, 0) == target_ranks(
            tied, targets, histories
        )
