"""EASE (Steck 2019, closed form) for a site's collaborative signals (clients/scorer/collaborative.py).

EASE's weights are a dense [n, n] inverse of the co-occurrence counts. Up to EASE_MAX_ITEMS items
n is the whole catalogue. Above that, EASE is built over the site's EASE_LARGE_ITEMS
most-interacted items only (their co-occurrence counts cut out of the sparse counts, then
inverted): its weights stay m × m however large the catalogue grows, and what else the build does
(choosing the items, cutting out their counts) is linear in the counts. A user is scored from the
history's items in that subset: the items in the subset get their EASE score, every other item
scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch

EASE_MAX_ITEMS = 20_000  # up to this many items EASE covers the whole catalogue
# Above that, EASE over the site's 5000 most-interacted items: 95 MB of float32 weights (a 1M-item
# site serves in 3.5 GB without EASE, under a 4 GB limit) and 9 s to build on 2 cores. On ML-1M
# restricted EASE's validation NDCG@10 followed the share of targets its items cover (0.0011
# below full EASE at 93 %, docs/experiments/ease-large-catalogues.md), and a large catalogue's
# top items cover little (22 % of a synthetic 1M-item site's), so m is as large as that memory
# allows; the inverse's time grows as m³.
EASE_LARGE_ITEMS = 5000
EASE_REGULARISATION = 250.0
# Up to this many users (a batch of requests) a history is a sparse row: the sum of its items'
# rows of the weights costs O(history × items), where the dense product reads all items² weights
# (at 10k items: 0.24 ms instead of 17 ms for one user). Beyond (the fits, evaluation) the
# dense product, as fast there and the same arithmetic the committed comparisons used.
SPARSE_USERS = 256


def ease_weights(
    gram_matrix: np.ndarray, regularisation: float = EASE_REGULARISATION
) -> torch.Tensor:
    """EASE (Steck 2019): B = I − P·diag(1/diag(P)) with P = (XᵀX + λI)⁻¹, zero diagonal."""
    gram = torch.from_numpy(np.asarray(gram_matrix, dtype=np.float64))
    gram += regularisation * torch.eye(gram.shape[0], dtype=torch.float64)
    inverse = torch.linalg.inv(gram)
    weights = -inverse / inverse.diagonal().unsqueeze(0)
    weights.fill_diagonal_(0.0)
    return weights.float()


def build_ease(
    gram: sp.csr_matrix, counts: np.ndarray, max_items: int, large_items: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """EASE weights from the [items, items] co-occurrence counts ``gram`` and the rows they are
    over: (weights [items, items], None) for a catalogue of at most ``max_items`` items, else
    (weights [m, m], rows [m]) over the m = min(items, ``large_items``) most-interacted rows
    (``counts``; ties: the lower row), most interacted first. (None, None) without items."""
    items = gram.shape[0]
    if not items:
        return None, None
    if items <= max_items:
        return ease_weights(gram.toarray()), None
    rows = popular_rows(counts, min(items, large_items))
    if not len(rows):
        return None, None
    return ease_weights(gram[rows][:, rows].toarray()), torch.from_numpy(rows)


def popular_rows(counts: np.ndarray, m: int) -> np.ndarray:
    """The ``m`` rows with the most interactions, most first (ties: the lower row first)."""
    return np.argsort(-np.asarray(counts), kind="stable")[:m].astype(np.int64)


def history_pairs(histories: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(user, catalogue row) of every history entry, in order (repeats kept): one tensor op
    over all users instead of one small op per user, which two busy cores make 100x slower."""
    lengths = torch.as_tensor([len(h) for h in histories], dtype=torch.long)
    users = torch.repeat_interleave(torch.arange(len(histories)), lengths)
    rows = torch.as_tensor([i for h in histories for i in h], dtype=torch.long)
    return users, rows


def history_matrix(
    histories: Sequence[Sequence[int]], items: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """[users, items]: 1 (True) where the item is in the user's history."""
    matrix = torch.zeros(len(histories), items, dtype=dtype)
    users, rows = history_pairs(histories)
    matrix[users, rows] = 1
    return matrix


def sparse_history_matrix(histories: Sequence[Sequence[int]], items: int) -> sp.csr_matrix:
    """``history_matrix`` as a sparse matrix (an item repeated in a history counts once)."""
    distinct = [sorted(set(h)) for h in histories]
    rows = np.repeat(np.arange(len(distinct)), [len(h) for h in distinct])
    cols = np.fromiter((i for h in distinct for i in h), dtype=np.int64, count=len(rows))
    values = np.ones(len(rows), dtype=np.float32)
    return sp.csr_matrix((values, (rows, cols)), shape=(len(distinct), items))


def ease_scores(
    weights: torch.Tensor,
    rows: torch.Tensor | None,
    histories: Sequence[Sequence[int]],
    items: int,
) -> torch.Tensor:
    """[users, items] EASE scores of histories given as catalogue rows: the history (its items
    among ``rows``) times ``weights``, placed at ``rows``; 0 at every other row. ``rows`` None:
    the weights are over the whole catalogue."""
    if rows is None and len(histories) <= SPARSE_USERS:
        return torch.from_numpy(sparse_history_matrix(histories, items) @ weights.numpy())
    matrix = history_matrix(histories, items)
    if rows is None:
        return matrix @ weights
    out = torch.zeros(len(histories), items)
    out[:, rows] = matrix[:, rows] @ weights
    return out


def ease_scores_at(
    weights: torch.Tensor,
    rows: torch.Tensor | None,
    histories: Sequence[Sequence[int]],
    columns: torch.Tensor,
    items: int,
) -> torch.Tensor:
    """``ease_scores(...)[:, columns]`` (0 past ``items``), reading only those columns of the
    weights: what a candidate set costs."""
    subset = torch.arange(items) if rows is None else rows
    order = torch.argsort(subset)
    ordered = subset[order]

    def positions(wanted: torch.Tensor) -> torch.Tensor:  # in the weights; -1: not among them
        found = torch.searchsorted(ordered, wanted).clamp(max=len(ordered) - 1)
        return torch.where(ordered[found] == wanted, order[found], -1)

    at = positions(columns)
    out = torch.zeros(len(histories), len(columns))
    for u, history in enumerate(histories):
        mine = positions(torch.as_tensor(sorted(set(history)), dtype=torch.long))
        mine = mine[mine >= 0]
        if len(mine):
            out[u] = weights[mine][:, at.clamp(min=0)].sum(0)
    return torch.where(at >= 0, out, torch.zeros(()))
