"""Training examples: one example is one user of the platform, with all the pairs it uses.

A user's training sequence (every item but the validation and test targets) gives (history → next
item) pairs, one per position. A user's example holds up to ``positions`` of them: always the most
recent pair (the one most like the held-out targets), plus others drawn at random. The user's loss
averages over its pairs (clients/training.py), so the whole history counts at the privacy cost of
one example.

For a LoRA step, the ``lora_items`` items just before the user's most recent target are encoded
again with gradient ("fresh" vectors) and stand in for their cached vectors in that user's history
windows, so the encoder's adapter learns from the same loss. Everything here is built from one
user's data and the public catalogue only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from clients.dataset import PlatformData
from shared.head import history_window


@dataclass
class UserBatch:
    """Padded tensors for a batch of users; B users, P pairs, N history items, H seen items."""

    users: list[int]
    windows: torch.Tensor  # [B, P, N] catalogue rows of each pair's history, most recent first
    window_mask: torch.Tensor  # [B, P, N]
    targets: torch.Tensor  # [B, P] catalogue row of each pair's next item
    valid: torch.Tensor  # [B, P] 1.0 for a real pair, 0.0 for padding
    seen: torch.Tensor  # [B, P, H] rows already in the history (left out of the softmax); pad = I
    fresh_rows: list[int]  # R catalogue rows encoded with gradient (LoRA steps; else empty)
    fresh_owner: torch.Tensor  # [R] the batch position of each fresh row's user
    fresh_slots: torch.Tensor  # [B, K] index into the R fresh rows (R = none)
    window_slot: torch.Tensor  # [B, P, N] which of the user's K fresh vectors to use, -1 = cache

    def __len__(self) -> int:
        return len(self.users)

    def to(self, device: torch.device) -> UserBatch:
        tensors = {
            k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()
        }
        return UserBatch(**tensors)


def trainable_users(data: PlatformData) -> list[int]:
    """Users whose training history has at least one (history → next item) pair."""
    return [u for u in range(data.num_users) if len(data.train_sequence(u)) >= 2]


def pair_positions(length: int, positions: int, rng: random.Random) -> list[int]:
    """Positions j (target = sequence[j]) of a sequence of ``length``: the last, plus random others."""
    last = length - 1
    others = list(range(1, last))
    if len(others) > positions - 1:
        others = rng.sample(others, positions - 1)
    return sorted(others) + [last]


def build_batch(
    data: PlatformData,
    users: list[int],
    rng: random.Random,
    *,
    positions: int,
    history_items: int,
    lora_items: int = 0,
) -> UserBatch:
    """The examples of ``users`` (each with two or more training items); ``lora_items`` > 0
    marks the fresh items of a LoRA step."""
    b, p, n, k = len(users), positions, history_items, lora_items
    catalogue = len(data.items)
    per_user = []
    for u in users:
        seq = data.train_sequence(u)
        chosen = pair_positions(len(seq), p, rng)
        fresh = list(dict.fromkeys(seq[max(0, len(seq) - 1 - k) : len(seq) - 1][::-1])) if k else []
        per_user.append((seq, chosen, fresh))
    longest_seen = max((max(chosen) for _, chosen, _ in per_user), default=1)
    windows = torch.zeros(b, p, n, dtype=torch.long)
    window_mask = torch.zeros(b, p, n, dtype=torch.bool)
    window_slot = torch.full((b, p, n), -1, dtype=torch.long)
    targets = torch.zeros(b, p, dtype=torch.long)
    valid = torch.zeros(b, p)
    seen = torch.full((b, p, max(longest_seen, 1)), catalogue, dtype=torch.long)
    fresh_rows: list[int] = []
    fresh_owner: list[int] = []
    fresh_slots = torch.zeros(b, max(k, 1), dtype=torch.long)
    for row, (seq, chosen, fresh) in enumerate(per_user):
        slot_of = {item: s for s, item in enumerate(fresh)}
        for col, j in enumerate(chosen):
            window = history_window(seq[:j], n)
            windows[row, col, : len(window)] = torch.as_tensor(window)
            window_mask[row, col, : len(window)] = True
            if slot_of:
                window_slot[row, col, : len(window)] = torch.as_tensor(
                    [slot_of.get(i, -1) for i in window]
                )
            targets[row, col] = seq[j]
            valid[row, col] = 1.0
            before = [i for i in seq[:j] if i != seq[j]]  # a re-watched item may be next again
            if before:
                seen[row, col, : len(before)] = torch.as_tensor(before)
        fresh_slots[row] = -1
        for s, item in enumerate(fresh):
            fresh_slots[row, s] = len(fresh_rows)
            fresh_rows.append(item)
            fresh_owner.append(row)
    fresh_slots[fresh_slots < 0] = len(fresh_rows)
    return UserBatch(
        users=list(users),
        windows=windows,
        window_mask=window_mask,
        targets=targets,
        valid=valid,
        seen=seen,
        fresh_rows=fresh_rows,
        fresh_owner=torch.as_tensor(fresh_owner, dtype=torch.long),
        fresh_slots=fresh_slots,
        window_slot=window_slot,
    )
