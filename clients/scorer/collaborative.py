"""A site's own collaborative signals, from its own interactions: item–item co-occurrence
(ItemKNN, cosine, top-k neighbours), recency-weighted popularity, and EASE (closed form,
clients/scorer/ease.py): over the whole catalogue up to 20k items, over the site's most-interacted
items above that.

They are built on the site, kept on the site's disk (safetensors, keyed by a hash of the
interactions they count, and checked against the catalogue they were built over: rebuilt when
either changes, or when the file is damaged) and used only for the site's own users' final
ranking (clients/scorer/fusion.py). None of it ever enters a Flower message: the federation's DP
guarantee covers what leaves the site, and these counts never do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from clients.scorer.ease import (
    EASE_LARGE_ITEMS,
    EASE_MAX_ITEMS,
    EASE_REGULARISATION,
    build_ease,
    ease_scores,
    ease_scores_at,
    ease_weights,
    history_pairs,
    sparse_history_matrix,
)
from clients.scorer.private_counts import (
    CountPrivacy,
    nearest_psd,
    noisy_gram,
    recent_distinct_positions,
)
from shared.data import PlatformData
from shared.text import Item

log = logging.getLogger(__name__)

FORMAT = "fedxrec-collaborative-1"
NEIGHBOURS = 200  # ItemKNN keeps each item's most similar items; enough for any top-K we serve
# ...up to this many in all (200 per item up to 100k items; 20 per item at a million: 240 MB)
NEIGHBOUR_ENTRIES = 20_000_000
MIN_NEIGHBOURS = 20
# With DP counts (noise std σ): ItemKNN keeps co-occurrences ≥ 3σ, EASE's λ is at least 50σ
KNN_NOISE_THRESHOLD = 3.0
EASE_NOISE_REGULARISATION = 50.0
HALF_LIFE = 0.1  # popularity: an interaction's weight halves every 10 % of the training span
SIGNALS = ("itemknn", "popularity", "ease")
KNN_CHUNK = 16_384  # history entries per ItemKNN step (x 200 neighbours: ~70 MB at most)


@dataclass(frozen=True)
class CollaborativeIndex:
    neighbours: torch.Tensor  # [items, k] rows of each item's most similar items (-1: none)
    similarity: torch.Tensor  # [items, k] their cosine similarity
    popularity: torch.Tensor  # [items] recency-weighted interaction counts
    counts: torch.Tensor  # [items] interactions counted (0: the site knows nothing of the item)
    ease: torch.Tensor | None  # [m, m] EASE weights (m = items without ease_rows); None: no items
    fingerprint: str  # of the interactions counted (and of the privacy settings, with DP)
    privacy: dict[str, Any] | None = None  # CountPrivacy.describe() when the counts are DP
    catalogue: str = ""  # catalogue_ids() of the catalogue whose rows these tensors index
    ease_rows: torch.Tensor | None = None  # [m] the catalogue rows EASE is over (None: every row)

    @property
    def items(self) -> int:
        return int(self.counts.shape[0])

    @property
    def signals(self) -> tuple[str, ...]:
        return tuple(s for s in SIGNALS if s != "ease" or self.ease is not None)

    def scores(
        self, histories: Sequence[Sequence[int]], columns: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """[users, items] scores of each signal for histories given as catalogue rows; with
        ``columns`` (catalogue rows) [users, len(columns)], 0 for rows past these counts."""
        if columns is not None:
            return self._scores_at(histories, columns)
        users = len(histories)
        out = {
            "itemknn": self._itemknn(histories),
            "popularity": self.popularity.expand(users, -1).clone(),
        }
        if self.ease is not None:
            out["ease"] = ease_scores(self.ease, self.ease_rows, histories, self.items)
        return out

    def _itemknn(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """[users, items]: the similarities of each history entry's neighbours, summed (in
        history order, so equal to adding them user by user)."""
        cells = len(histories) * self.items
        knn = torch.zeros(cells + 1)  # the last cell takes the "no neighbour" (-1) entries
        users, rows = history_pairs(histories)
        for start in range(0, len(rows), KNN_CHUNK):  # bounded memory on long histories
            part = slice(start, start + KNN_CHUNK)
            neighbours = self.neighbours[rows[part]]
            flat = torch.where(
                neighbours >= 0, users[part].unsqueeze(1) * self.items + neighbours, cells
            )
            knn.index_add_(0, flat.flatten(), self.similarity[rows[part]].flatten())
        return knn[:cells].view(len(histories), self.items)

    def _scores_at(
        self, histories: Sequence[Sequence[int]], columns: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``scores`` at the catalogue rows ``columns`` only: what a candidate set costs."""
        users = len(histories)
        if not self.items:
            return {name: torch.zeros(users, len(columns)) for name in self.signals}
        knn = torch.zeros(users, len(columns))
        order = torch.argsort(columns)
        ordered = columns[order]
        for u, history in enumerate(histories):
            if not history:
                continue
            rows = torch.as_tensor(list(history), dtype=torch.long)
            neighbours, sims = self.neighbours[rows].flatten(), self.similarity[rows].flatten()
            found = torch.searchsorted(ordered, neighbours).clamp(max=len(columns) - 1)
            keep = (neighbours >= 0) & (ordered[found] == neighbours)
            knn[u].index_add_(0, order[found[keep]], sims[keep])
        out = {"itemknn": knn, "popularity": at_rows(self.popularity, columns).expand(users, -1)}
        if self.ease is not None:
            out["ease"] = ease_scores_at(self.ease, self.ease_rows, histories, columns, self.items)
        return out

    # -- the site's disk ------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        tensors = {
            "neighbours": self.neighbours,
            "similarity": self.similarity,
            "popularity": self.popularity,
            "counts": self.counts,
            **({"ease": self.ease} if self.ease is not None else {}),
            **({"ease_rows": self.ease_rows} if self.ease_rows is not None else {}),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".collaborative.")
        os.close(fd)
        try:
            save_file(
                {k: v.contiguous() for k, v in tensors.items()},
                tmp,
                metadata={
                    "format": FORMAT,
                    "fingerprint": self.fingerprint,
                    "privacy": json.dumps(self.privacy),
                    "catalogue": self.catalogue,
                },
            )
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)

    @classmethod
    def load(
        cls, path: Path, fingerprint: str, catalogue: Sequence[Item]
    ) -> CollaborativeIndex | None:
        """The index saved at ``path`` if it counts exactly these interactions over this
        catalogue, else None (a damaged file is reported and rebuilt, never trusted)."""
        if not path.is_file():
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
            if meta.get("format") != FORMAT or meta.get("fingerprint") != fingerprint:
                return None
            # (a file from before the catalogue was recorded is checked by its shapes alone)
            if meta.get("catalogue", "") not in ("", catalogue_ids(catalogue)):
                return None  # the catalogue changed: its rows are other items
            t = load_file(str(path))
            privacy = json.loads(meta.get("privacy", "null"))
            index = cls(
                neighbours=t["neighbours"],
                similarity=t["similarity"],
                popularity=t["popularity"],
                counts=t["counts"],
                ease=t.get("ease"),
                fingerprint=fingerprint,
                privacy=privacy if isinstance(privacy, dict) else None,
                catalogue=catalogue_ids(catalogue),
                ease_rows=t.get("ease_rows"),  # (a file without it: EASE over every row)
            )
            index.check_shapes(len(catalogue))
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as err:
            log.warning("ignoring the cached collaborative index %s (%s); rebuilding it", path, err)
            return None
        return index

    def check_shapes(self, items: int) -> None:
        """Raise ValueError unless every tensor fits a catalogue of ``items`` items."""
        k = self.neighbours.shape[-1] if self.neighbours.ndim == 2 else -1
        m = items if self.ease_rows is None else len(self.ease_rows)
        expected = {
            "neighbours": ((items, k), torch.int64),
            "similarity": ((items, k), torch.float32),
            "popularity": ((items,), torch.float32),
            "counts": ((items,), torch.float32),
            **({"ease": ((m, m), torch.float32)} if self.ease is not None else {}),
            **({"ease_rows": ((m,), torch.int64)} if self.ease_rows is not None else {}),
        }
        for name, (shape, dtype) in expected.items():
            tensor = getattr(self, name)
            if tuple(tensor.shape) != shape or tensor.dtype != dtype:
                raise ValueError(
                    f"{name} is {tuple(tensor.shape)} {tensor.dtype}, expected {shape} {dtype}"
                )
        if items and not -1 <= int(self.neighbours.min()) <= int(self.neighbours.max()) < items:
            raise ValueError("neighbours name rows outside the catalogue")
        if self.ease_rows is not None:
            rows = self.ease_rows
            if self.ease is None or not 0 < m <= items or len(rows.unique()) != m:
                raise ValueError("ease_rows without EASE weights, or with repeated rows")
            if not 0 <= int(rows.min()) <= int(rows.max()) < items:
                raise ValueError("ease_rows name rows outside the catalogue")


def at_rows(values: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``values`` [n] at catalogue rows ``columns``, 0 past n (items added since it was built)."""
    if not len(values):
        return torch.zeros(len(columns))
    inside = columns < len(values)
    return torch.where(inside, values[columns.clamp(max=len(values) - 1)], torch.zeros(()))


def catalogue_ids(items: Sequence[Item]) -> str:
    """Identity of the rows an index is built over: the catalogue's item ids, in order."""
    digest = hashlib.blake2b(digest_size=10)
    for item in items:
        digest.update(item.item_id.encode("utf-8") + b"\0")
    return digest.hexdigest()


def interactions_fingerprint(sequences: Sequence[Sequence[int]], data: PlatformData) -> str:
    """Identity of what an index counts: each sequence's item ids and times, in order."""
    digest = hashlib.blake2b(digest_size=10)
    for u, seq in enumerate(sequences):
        times = (data.times or [[]] * data.num_users)[u][: len(seq)]
        digest.update(repr(([data.items[i].item_id for i in seq], times)).encode())
    return digest.hexdigest()


def index_fingerprint(
    sequences: Sequence[Sequence[int]], data: PlatformData, privacy: CountPrivacy | None = None
) -> str:
    """What an index is built from: the interactions counted, and the privacy settings if any."""
    fingerprint = interactions_fingerprint(sequences, data)
    if privacy is not None:
        settings = json.dumps(privacy.describe(), sort_keys=True).encode()
        fingerprint += "-dp" + hashlib.blake2b(settings, digest_size=4).hexdigest()
    return fingerprint


def build_collaborative_index(
    data: PlatformData,
    sequences: Sequence[Sequence[int]],
    *,
    neighbours: int | None = None,
    ease_max_items: int = EASE_MAX_ITEMS,
    ease_items: int = EASE_LARGE_ITEMS,
    privacy: CountPrivacy | None = None,
    seed: int | None = None,
) -> CollaborativeIndex:
    """Count ``sequences`` (each user's interactions to count, catalogue rows, oldest first).

    EASE covers the whole catalogue when it has at most ``ease_max_items`` items, else its
    ``ease_items`` most-interacted items (clients/scorer/ease.py).

    With ``privacy`` the counts are released once with user-level DP
    (clients/scorer/private_counts.py) and everything else is built from the noisy counts;
    ``seed`` fixes the noise for tests only (a real release must not be reproducible).
    """
    items = len(data.items)
    if neighbours is None:
        neighbours = neighbours_kept(items)
    fingerprint = index_fingerprint(sequences, data, privacy)
    if privacy is not None:
        return _private_index(
            data, sequences, privacy, fingerprint, neighbours, ease_max_items, seed
        )
    matrix = sparse_history_matrix(sequences, items)
    gram = (matrix.T @ matrix).tocsr()
    counts = gram.diagonal().astype(np.float32)  # users per item: the matrix is binary
    top, sims = _item_knn(gram, counts, neighbours)
    ease, ease_rows = build_ease(gram, counts, ease_max_items, ease_items)
    return CollaborativeIndex(
        neighbours=torch.from_numpy(top),
        similarity=torch.from_numpy(sims),
        popularity=torch.from_numpy(_recency_weighted(data, sequences, items)),
        counts=torch.from_numpy(counts),
        ease=ease,
        fingerprint=fingerprint,
        catalogue=catalogue_ids(data.items),
        ease_rows=ease_rows,
    )


def neighbours_kept(items: int) -> int:
    """ItemKNN neighbours kept per item: NEIGHBOURS, fewer where the catalogue is so large that
    they would outgrow NEIGHBOUR_ENTRIES (the index stays linear in the catalogue)."""
    return max(MIN_NEIGHBOURS, min(NEIGHBOURS, NEIGHBOUR_ENTRIES // max(items, 1)))


def _private_index(
    data: PlatformData,
    sequences: Sequence[Sequence[int]],
    privacy: CountPrivacy,
    fingerprint: str,
    neighbours: int,
    ease_max_items: int,
    seed: int | None,
) -> CollaborativeIndex:
    """The index built from one user-level DP release of the co-occurrence counts.

    Post-processing, each choice made on validation (docs/experiments/local-dp-counts.md):
    popularity is the noisy count (a separate recency-weighted release would add noise for no
    gain); an item whose count rounds to 0 is one the site knows nothing certain of; ItemKNN keeps
    co-occurrences of at least 3σ (the rest is mostly noise) and floors each item's norm at σ;
    EASE regularises more as σ grows.
    """
    items = len(data.items)
    if items > ease_max_items:
        raise ValueError(
            f"user-level DP counts need the dense co-occurrence matrix: catalogues up to "
            f"{ease_max_items} items, and this one has {items}; rank without "
            "--local-epsilon (exact counts) or with --text-only"
        )
    bounded = [[s[p] for p in recent_distinct_positions(s, privacy.max_items)] for s in sequences]
    std = privacy.noise_std
    gram = noisy_gram(sparse_history_matrix(bounded, items), std, np.random.default_rng(seed))
    counts = np.maximum(np.rint(gram.diagonal()), 0.0).astype(np.float32)
    co = sp.csr_matrix(np.where(gram >= KNN_NOISE_THRESHOLD * std, gram, 0.0))
    top, sims = _item_knn(co, np.maximum(counts, std), neighbours)
    regularisation = max(EASE_REGULARISATION, EASE_NOISE_REGULARISATION * std)
    return CollaborativeIndex(
        neighbours=torch.from_numpy(top),
        similarity=torch.from_numpy(sims),
        popularity=torch.from_numpy(np.maximum(gram.diagonal(), 0.0).astype(np.float32)),
        counts=torch.from_numpy(counts),
        ease=ease_weights(nearest_psd(gram), regularisation) if items else None,
        fingerprint=fingerprint,
        privacy=privacy.describe(),
        catalogue=catalogue_ids(data.items),
    )


def _item_knn(co: sp.csr_matrix, counts: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each item's ``k`` most similar items by cosine of co-occurrence: |i ∩ j| / √(|i|·|j|)."""
    items = co.shape[1]
    co = co.tocsr(copy=True)
    co.setdiag(0.0)
    co.eliminate_zeros()
    norms = np.sqrt(np.maximum(counts, 1.0))
    k = max(1, min(k, items))
    top = np.full((items, k), -1, dtype=np.int64)
    sims = np.zeros((items, k), dtype=np.float32)
    for i in range(items):
        start, end = co.indptr[i], co.indptr[i + 1]
        cols = co.indices[start:end]
        values = co.data[start:end] / (norms[i] * norms[cols])
        if len(cols) > k:
            best = np.argpartition(-values, k - 1)[:k]
            cols, values = cols[best], values[best]
        order = np.argsort(-values, kind="stable")
        top[i, : len(cols)] = cols[order]
        sims[i, : len(cols)] = values[order]
    return top, sims


def _recency_weighted(
    data: PlatformData, sequences: Sequence[Sequence[int]], items: int
) -> np.ndarray:
    """Interaction counts, each weighted by how recent it is (plain counts without timestamps)."""
    popularity = np.zeros(items, dtype=np.float64)
    times = [(data.times or [])[u][: len(s)] if data.times else [] for u, s in enumerate(sequences)]
    flat = [t for ts in times for t in ts]
    span = (max(flat) - min(flat)) if flat else 0.0
    end = max(flat) if flat else 0.0
    for seq, ts in zip(sequences, times, strict=True):
        if span > 0 and len(ts) == len(seq):
            weights = 0.5 ** ((end - np.asarray(ts)) / (HALF_LIFE * span))
        else:
            weights = np.ones(len(seq))
        np.add.at(popularity, np.asarray(seq, dtype=np.int64), weights)
    return popularity.astype(np.float32)
