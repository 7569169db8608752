"""Two-stage ranking for large catalogues: candidates first, then the fused score on them only.

Up to FULL_MAX_ITEMS items every request scores the whole catalogue (exact; the comparisons'
protocol). Beyond, a request gathers candidates:

- the model's nearest items to the user vector, from a FAISS index over the item vectors (inner
  product on the L2-normalised vectors): HNSW with fp16 storage (``hnsw``, the default beyond
  FULL_MAX_ITEMS: approximate, its recall is what ``simulations.bench.scale`` measures) or
  ``IndexFlatIP`` (``flat``: exact, but at one request at a time no faster than the full
  ranking, so only on request);
- with the site's own signals, the ItemKNN neighbours of the history's items and the site's most
  popular items;
- every item added while serving after the index was built (they are not in it);

then ranks only those by the same fused score as a full ranking, z-scores taken over the
candidates (clients/scorer/fusion.py: with every row a candidate the two rankings are equal).

The index is built once per model and catalogue and cached beside the item vectors
(``candidates-KIND-MODEL-CATALOGUE.faiss``: a FAISS file, no pickle), so a new adapter or an
edited catalogue builds a new one; an unreadable file is reported and rebuilt.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clients.scorer.collaborative import CollaborativeIndex
from clients.scorer.defaults import CANDIDATE_KINDS, FULL_MAX_ITEMS
from clients.scorer.item_index import ItemIndex

log = logging.getLogger(__name__)

MODEL_CANDIDATES = 400  # the model's nearest items per request
POPULAR_CANDIDATES = 200  # the site's most popular items, in every request's candidates
HNSW_NEIGHBOURS = 32  # M: graph degree (memory: 2·M int32 per item on the base layer)
HNSW_EF_CONSTRUCTION = 64
# search breadth: 256 gave candidate recall@10 0.935 at a million items (README "Benchmarks")
HNSW_EF_SEARCH = 1024


def chosen_kind(items: int, requested: str = "auto") -> str:
    """``full``, ``flat`` or ``hnsw`` for a catalogue of ``items`` items."""
    if requested not in CANDIDATE_KINDS:
        raise ValueError(f"candidates={requested!r}: choose one of {', '.join(CANDIDATE_KINDS)}")
    if requested != "auto":
        return requested
    return "full" if items <= FULL_MAX_ITEMS else "hnsw"


@dataclass(frozen=True)
class CandidateIndex:
    kind: str  # "flat" | "hnsw"
    index: Any  # faiss.Index over rows 0 .. rows-1 of the catalogue
    rows: int
    popular: tuple[int, ...] = ()  # the site's most popular rows (empty: text-only ranking)
    build_s: float = 0.0
    from_cache: bool = False

    def nearest(self, user_vectors: torch.Tensor, n: int) -> list[np.ndarray]:
        """Each user's ``n`` nearest rows by inner product (fewer when the index holds fewer)."""
        queries = np.ascontiguousarray(user_vectors.detach().float().cpu().numpy())
        _, found = self.index.search(queries, min(n, self.rows))
        return [row[row >= 0] for row in found]

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "indexed_items": self.rows,
            "model_candidates": MODEL_CANDIDATES,
            "popular_candidates": len(self.popular),
            "build_s": round(self.build_s, 3),
            "from_cache": self.from_cache,
        }


def faiss_index(vectors: np.ndarray, kind: str) -> Any:
    """A FAISS inner-product index over ``vectors`` [n, d] float32 (``flat`` or ``hnsw``)."""
    import faiss

    dim = vectors.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWSQ(
            dim, faiss.ScalarQuantizer.QT_fp16, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT
        )
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
        index.train(vectors[: min(len(vectors), 100_000)])
    else:
        raise ValueError(f"no FAISS index of kind {kind!r}")
    for start in range(0, len(vectors), 100_000):
        index.add(np.ascontiguousarray(vectors[start : start + 100_000]))
    return index


def popular_rows(local: CollaborativeIndex | None, n: int = POPULAR_CANDIDATES) -> tuple[int, ...]:
    if local is None or local.items == 0:
        return ()
    top = torch.topk(local.popularity.float(), min(n, local.items)).indices
    return tuple(int(r) for r in top)


def build_candidate_index(
    index: ItemIndex,
    local: CollaborativeIndex | None = None,
    *,
    requested: str = "auto",
    cache_dir: Path | None = None,
) -> CandidateIndex | None:
    """The catalogue's candidate index, read from ``cache_dir`` when it holds one for this model
    and catalogue; None when the catalogue is ranked in full."""
    kind = chosen_kind(len(index.items), requested)
    if kind == "full":
        return None
    popular = popular_rows(local)
    path = (
        cache_dir / f"candidates-{kind}-{index.model_fingerprint}-{index.catalogue_hash}.faiss"
        if cache_dir is not None
        else None
    )
    rows = len(index.items)
    cached = _read(path, rows) if path is not None else None
    if cached is not None:
        return CandidateIndex(kind, cached, rows, popular, 0.0, from_cache=True)
    started = time.perf_counter()
    log.info("building the %s candidate index over %d items", kind, rows)
    built = faiss_index(index.vectors.detach().float().cpu().numpy(), kind)
    build_s = time.perf_counter() - started
    if path is not None:
        _write(built, path)
    return CandidateIndex(kind, built, rows, popular, build_s)


def _read(path: Path, rows: int) -> Any | None:
    if not path.is_file():
        return None
    import faiss

    try:
        found = faiss.read_index(str(path))
    except RuntimeError as err:
        log.warning("ignoring the cached candidate index %s (%s); rebuilding it", path, err)
        return None
    if found.ntotal != rows:
        log.warning("ignoring the cached candidate index %s (wrong size); rebuilding it", path)
        return None
    return found


def _write(index: Any, path: Path) -> None:
    import faiss

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".candidates.")
    os.close(fd)
    try:
        faiss.write_index(index, tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def candidate_rows(
    candidates: CandidateIndex,
    nearest: np.ndarray,
    history: Sequence[int],
    catalogue_rows: int,
    local: CollaborativeIndex | None,
    drop: frozenset[int] | set[int],
) -> torch.Tensor:
    """One request's candidates (sorted rows): the model's ``nearest`` rows, the history's
    neighbours and the popular rows, the rows added since the index was built, minus ``drop``."""
    parts = [nearest.astype(np.int64), np.asarray(candidates.popular, dtype=np.int64)]
    parts.append(np.arange(candidates.rows, catalogue_rows, dtype=np.int64))
    parts.append(np.asarray(history, dtype=np.int64))  # ranked when the request keeps them
    if local is not None:
        known = [r for r in history if r < local.items]
        if known:
            neighbours = local.neighbours[torch.as_tensor(known, dtype=torch.long)].flatten()
            parts.append(neighbours[neighbours >= 0].numpy())
    rows = np.unique(np.concatenate(parts))
    if drop:
        rows = rows[~np.isin(rows, np.fromiter(drop, dtype=np.int64, count=len(drop)))]
    return torch.from_numpy(rows)
