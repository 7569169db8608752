"""Training examples: one example is one user of the platform, with all the pairs it uses.

A user's training sequence (every item but the validation and test targets) gives (history → next
item) pairs, one per position. A user's example holds up to ``positions`` of them: always the most
recent pair (the one most like the held-out targets), plus others drawn at random. The user's loss
averages over its pairs (clients/federation/training.py), so the whole history counts at the privacy cost of
one example.

For a LoRA step, the ``lora_items`` items just before the user's most recent target are encoded
again with gradient ("fresh" vectors) and stand in for their cached vectors in that user's history
windows, so the encoder's adapter learns from the same loss. Everything here is built from one
user's data and the public catalogue only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from shared.data import PlatformData


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
    pad = len(data.items)  # the "no item" row of ``seen``
    sequences = [np.asarray(data.train_sequence(u), dtype=np.int64) for u in users]
    chosen = [np.asarray(pair_positions(len(seq), p, rng)) for seq in sequences]
    longest = max((int(js[-1]) for js in chosen), default=1)
    windows = np.zeros((b, p, n), dtype=np.int64)
    window_mask = np.zeros((b, p, n), dtype=bool)
    window_slot = np.full((b, p, n), -1, dtype=np.int64)
    targets = np.zeros((b, p), dtype=np.int64)
    valid = np.zeros((b, p), dtype=np.float32)
    seen = np.full((b, p, longest), pad, dtype=np.int64)
    fresh_rows: list[int] = []
    fresh_owner: list[int] = []
    fresh_slots = np.zeros((b, max(k, 1)), dtype=np.int64)
    back = np.arange(1, n + 1)
    for row, (seq, js) in enumerate(zip(sequences, chosen, strict=True)):
        m = len(js)
        at = js[:, None] - back[None, :]  # positions of each pair's window, most recent first
        inside = at >= 0
        windows[row, :m] = np.where(inside, seq[at.clip(min=0)], 0)
        window_mask[row, :m] = inside
        targets[row, :m] = seq[js]
        valid[row, :m] = 1.0
        before = np.arange(js[-1])
        # Everything already in the history is left out of the softmax, except the target
        # itself (a re-watched item may be next again).
        keep = (before[None, :] < js[:, None]) & (seq[before][None, :] != seq[js][:, None])
        seen[row, :m, : len(before)] = np.where(keep, seq[before][None, :], pad)
        fresh = list(dict.fromkeys(seq[max(0, len(seq) - 1 - k) : len(seq) - 1][::-1].tolist()))
        fresh_slots[row] = -1
        for s, item in enumerate(fresh):
            window_slot[row, :m][inside & (windows[row, :m] == item)] = s
            fresh_slots[row, s] = len(fresh_rows)
            fresh_rows.append(item)
            fresh_owner.append(row)
    fresh_slots[fresh_slots < 0] = len(fresh_rows)
    return UserBatch(
        users=list(users),
        windows=torch.from_numpy(windows),
        window_mask=torch.from_numpy(window_mask),
        targets=torch.from_numpy(targets),
        valid=torch.from_numpy(valid),
        seen=torch.from_numpy(seen),
        fresh_rows=fresh_rows,
        fresh_owner=torch.as_tensor(fresh_owner, dtype=torch.long),
        fresh_slots=torch.from_numpy(fresh_slots),
        window_slot=torch.from_numpy(window_slot),
    )
