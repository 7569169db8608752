"""Training examples: one example is one user of the platform, with every position it trains.

A user's training sequence is every item but the validation and test targets. Its example is the
transformer's input, the ``window`` items before the last one (right-aligned after the start
vector: shared/head.py), and the item each slot should predict next: the first item for the start
slot (unless the window cut earlier items off: then the start slot has no target), the following
item for every other slot. The user's loss averages over all of them
(clients/federation/gradients.py), so the whole recent history counts at the privacy cost of one
example.

For a LoRA step, the ``lora_items`` items just before the user's most recent target are encoded
again with gradient ("fresh" vectors) and stand in for their cached text vectors in that user's
input, so the encoder's adapter learns from the same loss. Everything here is built from one
user's data and the public catalogue only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from shared.data import PlatformData

NO_TARGET = -100  # a slot with nothing to predict (cross-entropy's ignore index)


@dataclass
class UserBatch:
    """Padded tensors for a batch of B users, N = window input slots, K fresh items per user."""

    users: list[int]
    rows: torch.Tensor  # [B, N] catalogue rows of the input, right-aligned (0 where padding)
    mask: torch.Tensor  # [B, N] real input items
    targets: torch.Tensor  # [B, N + 1] the next item's row at each slot, NO_TARGET where none
    fresh_rows: list[int]  # R catalogue rows encoded with gradient (LoRA steps; else empty)
    fresh_owner: torch.Tensor  # [R] the batch position of each fresh row's user
    fresh_slots: torch.Tensor  # [B, K] index into the R fresh rows (R = none)
    input_slot: torch.Tensor  # [B, N] which of the user's K fresh vectors to use, -1 = cached

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


def build_batch(
    data: PlatformData, users: list[int], *, window: int, lora_items: int = 0
) -> UserBatch:
    """The examples of ``users`` (each with two or more training items); ``lora_items`` > 0
    marks the fresh items of a LoRA step."""
    b, n, k = len(users), window, lora_items
    rows = np.zeros((b, n), dtype=np.int64)
    mask = np.zeros((b, n), dtype=bool)
    targets = np.full((b, n + 1), NO_TARGET, dtype=np.int64)
    input_slot = np.full((b, n), -1, dtype=np.int64)
    fresh_rows: list[int] = []
    fresh_owner: list[int] = []
    fresh_slots = np.full((b, max(k, 1)), -1, dtype=np.int64)
    for row, u in enumerate(users):
        seq = np.asarray(data.train_sequence(u), dtype=np.int64)
        inputs = seq[:-1][-n:]
        length = len(inputs)
        rows[row, n - length :] = inputs
        mask[row, n - length :] = True
        targets[row, n - length :] = seq[len(seq) - 1 - length :]
        if len(seq) - 1 > n:  # the window cut the history: the start slot predicts nothing
            targets[row, n - length] = NO_TARGET
        fresh = list(dict.fromkeys(inputs[::-1][:k].tolist()))  # most recent first, each once
        for s, item in enumerate(fresh):
            input_slot[row][mask[row] & (rows[row] == item)] = s
            fresh_slots[row, s] = len(fresh_rows)
            fresh_rows.append(item)
            fresh_owner.append(row)
    fresh_slots[fresh_slots < 0] = len(fresh_rows)
    return UserBatch(
        users=list(users),
        rows=torch.from_numpy(rows),
        mask=torch.from_numpy(mask),
        targets=torch.from_numpy(targets),
        fresh_rows=fresh_rows,
        fresh_owner=torch.as_tensor(fresh_owner, dtype=torch.long),
        fresh_slots=torch.from_numpy(fresh_slots),
        input_slot=torch.from_numpy(input_slot),
    )
