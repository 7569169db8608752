"""The model's head over the text encoder: an item adaptor and a causal transformer over the user's
recent items (SASRec-style). Neither sees an item or user ID, so one head serves every platform,
a new item and a new platform. Reading it top to bottom:

1. ``ItemAdaptor``: an item's vector is ``linear(whiten(text vector))``. The whitening (a mean and
   a matrix, fixed) is the PCA whitening of the federation's public catalogue text
   (shared/whitening.py); the linear map (text width → ``dim``) is trained. The same adaptor gives
   the history's vectors and the vectors of the catalogue it scores.
2. ``TransformerHead``: a learned start vector, then the vectors of the user's ``window`` most
   recent items, oldest first, right-aligned in ``window + 1`` slots (the most recent item always
   in the last slot) with a learned vector per slot; ``blocks`` pre-LayerNorm causal
   self-attention blocks; a final LayerNorm. The output at a slot is the user after the items up to
   it: training scores the next item at every slot (clients/federation/gradients.py), ranking reads
   the last slot. A user with no history is the start vector's output: the model's prior.
3. The score of an item for a user is ``user · item``: a dot product, so FAISS and two-stage
   ranking work on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

HEAD_FORMAT = "fedxrec-transformer-head-1"
WHITENING = ("adaptor.mean", "adaptor.whitening")  # fixed tensors: set once, never trained
ADAPTOR_INIT_SCALE = 0.1  # small item vectors at the start: a near-uniform first softmax
USER_ELEMENTS = 1 << 24  # history vectors' elements run through the transformer at once


class ItemAdaptor(nn.Module):
    """Text vectors → item vectors: a fixed whitening, then a trained linear map."""

    def __init__(self, text_dim: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(text_dim))
        self.register_buffer("whitening", torch.eye(text_dim))
        self.linear = nn.Linear(text_dim, dim)
        with torch.no_grad():
            self.linear.weight.mul_(ADAPTOR_INIT_SCALE)
            self.linear.bias.zero_()

    def whiten(self, text_vectors: torch.Tensor) -> torch.Tensor:
        return (text_vectors - self.mean) @ self.whitening

    def forward(self, text_vectors: torch.Tensor) -> torch.Tensor:
        return self.linear(self.whiten(text_vectors))


class CausalBlock(nn.Module):
    """Pre-LayerNorm self-attention (each slot sees itself and the slots before it), then an MLP."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.attention_norm, self.mlp_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attention_out = nn.Linear(dim, dim)
        self.mlp_in, self.mlp_out = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        batch, slots, dim = x.shape
        q, k, v = self.qkv(self.attention_norm(x)).split(dim, dim=-1)
        q, k, v = (t.reshape(batch, slots, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        weights = (q @ k.transpose(-1, -2)) / math.sqrt(dim // self.heads)
        weights = weights.masked_fill(~allowed.unsqueeze(1), float("-inf")).softmax(-1)
        mixed = (self.dropout(weights) @ v).transpose(1, 2).reshape(batch, slots, dim)
        x = x + self.dropout(self.attention_out(mixed))
        mlp = self.mlp_out(nn.functional.gelu(self.mlp_in(self.mlp_norm(x))))
        return x + self.dropout(mlp)


class TransformerHead(nn.Module):
    def __init__(
        self,
        text_dim: int,
        *,
        dim: int,
        window: int,
        blocks: int,
        heads: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.dim, self.window = dim, window
        self.adaptor = ItemAdaptor(text_dim, dim)
        self.start = nn.Parameter(torch.zeros(dim))
        self.slots = nn.Parameter(torch.randn(window + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(CausalBlock(dim, heads, dropout) for _ in range(blocks))
        self.out_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, items: torch.Tensor, mask: torch.Tensor, *, every_slot: bool = False
    ) -> torch.Tensor:
        """User vectors [U, dim] of histories given as item vectors ``items`` [U, N, dim],
        right-aligned (the most recent item last; ``mask`` [U, N] marks real ones, N ≤ window).
        ``every_slot``: the outputs of all N + 1 slots [U, N + 1, dim] instead of the last."""
        users, n, dim = items.shape
        x = torch.cat([items.new_zeros(users, 1, dim), items], dim=1)
        slot = torch.arange(n + 1, device=items.device)
        # the start vector sits in the slot just before the first real item
        is_start = slot.unsqueeze(0) == (n - mask.sum(1)).unsqueeze(1)
        x = torch.where(is_start.unsqueeze(-1), self.start, x)
        x = self.dropout(x + self.slots[-(n + 1) :])
        real = torch.cat([mask.new_zeros(users, 1), mask], dim=1) | is_start
        causal = torch.ones(n + 1, n + 1, dtype=torch.bool, device=items.device).tril()
        # a padding slot attends to itself only, so its (unused) output stays finite
        allowed = causal & (real.unsqueeze(1) | torch.eye(n + 1, dtype=torch.bool, device=x.device))
        for block in self.blocks:
            x = block(x, allowed)
        x = self.out_norm(x)
        return x if every_slot else x[:, -1]


def recent_window(
    histories: Sequence[Sequence[int]], size: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Catalogue rows [users, size] of each history's ``size`` most recent items, right-aligned
    (oldest first, the most recent last; 0 where empty), and the mask of real ones."""
    rows = torch.zeros(len(histories), size, dtype=torch.long)
    mask = torch.zeros(len(histories), size, dtype=torch.bool)
    for u, history in enumerate(histories):
        window = list(history[-size:]) if size else []
        if window:
            rows[u, size - len(window) :] = torch.as_tensor(window)
            mask[u, size - len(window) :] = True
    return rows.to(device), mask.to(device)


def user_vectors(
    head: TransformerHead, table: torch.Tensor, histories: Sequence[Sequence[int]]
) -> torch.Tensor:
    """User vectors [users, dim] for histories given as rows of the item-vector ``table``
    (oldest first)."""
    chunk = max(1, USER_ELEMENTS // ((head.window + 1) * head.dim))
    out = []
    for s in range(0, len(histories), chunk):
        rows, mask = recent_window(histories[s : s + chunk], head.window, table.device)
        out.append(head(table[rows], mask))
    return torch.cat(out) if out else table.new_zeros(0, head.dim)
