"""The sequence head: a user vector from the vectors of the user's most recent items.

It sees only text-derived item vectors and their recency positions, never an item or user ID, so the
same head serves every platform, a new item and a new platform. Reading it top to bottom:

1. attention pooling: the weight of history item t is a softmax over the history of
   ``recency[t] + attention · v_t``, where position t = 0 is the most recent item;
2. ``h = Σ_t weight_t · v_t``;
3. the user vector ``u = h + h @ transform + prior``: ``transform`` (zero at start, so an untrained
   head is the recency-weighted mean of the history) learns which items follow which in vector
   space; ``prior`` is an ID-free item prior: ``prior · v`` is how much the model likes item v
   before it knows the user (a popularity direction read from the text); it folds into the user
   vector because ``u·v + prior·v = (u + prior)·v``.

The score of an item is ``u · v / temperature``. Every trainable tensor is on the user side, so a
user's loss depends only on that user's history and the catalogue's vectors: per-user gradients are
exact (clients/federation/training.py).

A history is given as rows of an item-vector table (the catalogue), not as gathered vectors: the
pooling is a [users, table] weight matrix times the table, which costs what scoring the catalogue
costs anyway and is several times faster than gathering N vectors per user on a CPU. In a LoRA step
some history items carry vectors encoded with gradient ("fresh"): they take the place of their
table rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

HEAD_FORMAT = "fedxrec-sequence-head-1"
POOL_ELEMENTS = 1 << 24  # history vectors' elements pooled at once outside training (64 MiB)


class SequenceHead(nn.Module):
    def __init__(self, dim: int, history_items: int) -> None:
        super().__init__()
        self.dim, self.history_items = dim, history_items
        self.recency = nn.Parameter(torch.zeros(history_items))
        self.attention = nn.Parameter(torch.zeros(dim))
        self.transform = nn.Parameter(torch.zeros(dim, dim))
        self.prior = nn.Parameter(torch.zeros(dim))

    def forward(
        self,
        table: torch.Tensor,
        rows: torch.Tensor,
        mask: torch.Tensor,
        fresh: torch.Tensor | None = None,
        fresh_slot: torch.Tensor | None = None,
        *,
        pooled: bool = False,
    ) -> torch.Tensor:
        """User vectors [U, dim] of histories ``rows`` [U, N] (most recent first) of ``table``.

        ``mask`` [U, N] marks real history items. ``fresh`` [K, dim] (one user's) replaces the
        table row of every history item whose ``fresh_slot`` [U, N] is >= 0. An empty history
        gets the prior alone (the model's ranking before it knows anything of the user).
        ``pooled``: return the pooled history ``h`` of steps 1–2 instead.
        """
        h = self.pool(table, rows, mask, fresh, fresh_slot)
        return h if pooled else self.user_map(h)

    def pool(
        self,
        table: torch.Tensor,
        rows: torch.Tensor,
        mask: torch.Tensor,
        fresh: torch.Tensor | None = None,
        fresh_slot: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Steps 1–2: the attention-pooled history ``h`` [U, dim]."""
        history = table[rows]  # [U, N, dim]: only the rows read (a catalogue may be millions)
        item_attention = history @ self.attention
        taken = None
        if fresh is not None and fresh_slot is not None:
            taken = fresh_slot >= 0
            fresh_attention = (fresh @ self.attention)[fresh_slot.clamp(min=0)]
            item_attention = torch.where(taken, fresh_attention, item_attention)
        logits = self.recency[: rows.shape[-1]] + item_attention
        # A large finite negative, not -inf: an empty history then has zero weights, not NaN.
        weights = torch.softmax(logits.masked_fill(~mask, -1e9), dim=-1) * mask
        from_table = weights if taken is None else weights.masked_fill(taken, 0.0)
        pooled = (from_table.unsqueeze(-1) * history).sum(1)
        if taken is not None:
            per_slot = weights.new_zeros(rows.shape[0], fresh.shape[0])
            per_slot = per_slot.scatter_add(-1, fresh_slot.clamp(min=0), weights * taken)
            pooled = pooled + per_slot @ fresh
        return pooled

    def user_map(self, pooled: torch.Tensor) -> torch.Tensor:
        """Step 3: ``u = h + h @ transform + prior``."""
        return pooled + pooled @ self.transform + self.prior


def history_window(sequence: Sequence[int], size: int) -> list[int]:
    """The ``size`` most recent entries of ``sequence`` (oldest first), most recent first."""
    return list(sequence[-size:])[::-1] if size else []


def window_tensors(
    histories: Sequence[Sequence[int]], size: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Table rows [users, size] of each history's window (0 where empty) and its mask."""
    rows = torch.zeros(len(histories), size, dtype=torch.long)
    mask = torch.zeros(len(histories), size, dtype=torch.bool)
    for u, history in enumerate(histories):
        window = history_window(history, size)
        if window:
            rows[u, : len(window)] = torch.as_tensor(window)
            mask[u, : len(window)] = True
    return rows.to(device), mask.to(device)


def user_vectors(
    head: SequenceHead, table: torch.Tensor, histories: Sequence[Sequence[int]]
) -> torch.Tensor:
    """User vectors [users, dim] for histories given as rows of ``table`` (oldest first)."""
    chunk = max(1, POOL_ELEMENTS // (head.history_items * head.dim))
    out = [
        head(table, *window_tensors(histories[s : s + chunk], head.history_items, table.device))
        for s in range(0, len(histories), chunk)
    ]
    return torch.cat(out) if out else table.new_zeros(0, head.dim)
