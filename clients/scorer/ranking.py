"""Exact top-K over a site's catalogue for a user's history, and why each item was recommended.

Score: the dot product of the user vector (the transformer over the item vectors of the user's most
recent items, exactly as in training: shared/head.py) and the item vector (the encoder over the
item text, then the head's adaptor), as the model ranks in training and evaluation.

Search is brute force in float32 on the scoring device, so results are exact (no approximate
index); a catalogue larger than the device's memory can stay on the host and is streamed through
the device in chunks, keeping a running top-K. Items with equal scores are listed in catalogue
order (which of several items tied at the K-th place gets in is not specified).

Explanation ("because"): for a recommended item r and each history item h, the cosine similarity
of their item vectors, v_h · v_r / (‖v_h‖ ‖v_r‖); the ``explain_top`` history items with the
highest similarity are reported, best first. It answers "which of the things you interacted with
is this most like" in the same vector space as the score. It is an attribution aid, not an exact
decomposition: the score comes from the transformer's reading of the whole history, not from a
sum of similarities. A free-text history is ';'-separated item texts, most recent first, each
encoded like an item text; the head reads their vectors as it reads catalogue items'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from clients.scorer.candidates import MODEL_CANDIDATES, CandidateIndex, candidate_rows
from clients.scorer.fusion import fuse, new_user_scores, standardised_signals
from clients.scorer.item_index import ItemIndex
from clients.scorer.local_signals import LocalSignals
from shared.model import Recommender

# Rows of item vectors scored at once: bounds the [users, rows] score matrix (32 users x 256k rows
# of float32 = 32 MiB) and the slice of host-resident vectors copied to the device per step.
DEFAULT_CHUNK_ROWS = 262_144
EXPLAIN_TOP = 3


@dataclass(frozen=True)
class Query:
    """One user to rank for: catalogue rows of their history (oldest first), or free text."""

    history_rows: tuple[int, ...] = ()
    text: str = ""
    k: int = 10
    exclude_seen: bool = True
    unknown_ids: tuple[str, ...] = ()  # ids of the request this catalogue does not hold (ignored)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k={self.k} is out of range: ask for at least 1 item")

    @property
    def new_user(self) -> bool:
        """Nothing known of the user (no known item, no text): ranked by the site's prior."""
        return not self.history_rows and not self.text.strip()


@dataclass(frozen=True)
class Evidence:
    """A history item (or free-text part) and its similarity to the recommended item."""

    item_id: str | None  # None for a part of a free-text history
    title: str
    similarity: float


@dataclass(frozen=True)
class Recommendation:
    item_id: str
    title: str
    score: float
    because: tuple[Evidence, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "title": self.title,
            "score": round(self.score, 6),
            "because": [
                {"item_id": e.item_id, "title": e.title, "similarity": round(e.similarity, 6)}
                for e in self.because
            ],
        }


def query_for_ids(
    index: ItemIndex, item_ids: Sequence[str], *, k: int = 10, exclude_seen: bool = True
) -> Query:
    """A query from item ids of this site (oldest first). Ids the catalogue does not hold (an
    item removed since, another site's id) are left out and named in ``unknown_ids``; a history
    with no known id is a new user's."""
    ids = [str(i).strip() for i in item_ids if str(i).strip()]
    known = [i for i in ids if i in index.row_of]
    unknown = tuple(dict.fromkeys(i for i in ids if i not in index.row_of))
    return Query(
        history_rows=tuple(index.rows_for(known)),
        k=k,
        exclude_seen=exclude_seen,
        unknown_ids=unknown,
    )


def text_parts(query: Query, limit: int) -> list[str]:
    """The items of a free-text history, most recent first (at most ``limit``)."""
    return [p.strip() for p in query.text.split(";") if p.strip()][:limit]


def dot_scores(user_vectors: torch.Tensor, item_vectors: torch.Tensor) -> torch.Tensor:
    """``user_vectors @ item_vectors.T`` [users, items], float32.

    One user on the CPU goes through numpy's BLAS instead of torch's: for a single user vector
    against row-major item vectors the product is a matrix-vector product, and torch's build
    (MKL) runs it at 2-3x the time of numpy's OpenBLAS on the same rows (measured at 10k to 1M
    items; ``simulations.bench.scale`` prints the top-k's speed beside FAISS). Several users make
    it a matrix product, where torch is as fast or faster.
    """
    if (
        user_vectors.shape[0] == 1
        and user_vectors.device.type == "cpu"
        and item_vectors.device.type == "cpu"
        and user_vectors.dtype == item_vectors.dtype == torch.float32
    ):
        user = user_vectors[0].detach().numpy()
        return torch.from_numpy(item_vectors.detach().numpy() @ user).unsqueeze(0)
    return user_vectors @ item_vectors.T


def top_k(
    user_vectors: torch.Tensor,
    item_vectors: torch.Tensor,
    k: int,
    exclude: Sequence[Sequence[int]] | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` rows of ``item_vectors`` by dot product, for each user vector.

    Returns (scores, rows), each [users, min(k, items)], best first. ``exclude[u]`` lists rows
    user ``u`` must not get: they score -inf (callers drop those when fewer items remain than k).
    ``item_vectors`` may live on another device (e.g. the host): chunks are copied to the users'.
    """
    users, total = user_vectors.shape[0], item_vectors.shape[0]
    k = min(k, total)
    device = user_vectors.device
    ex_users = ex_rows = None
    if exclude is not None and any(len(rows) for rows in exclude):
        ex_users = torch.tensor(
            [u for u, rows in enumerate(exclude) for _ in rows], dtype=torch.long, device=device
        )
        ex_rows = torch.tensor(
            [r for rows in exclude for r in rows], dtype=torch.long, device=device
        )
    best_scores = torch.empty(users, 0, device=device)
    best_rows = torch.empty(users, 0, dtype=torch.long, device=device)
    for start in range(0, total, chunk_rows):
        chunk = item_vectors[start : start + chunk_rows].to(device, user_vectors.dtype)
        scores = dot_scores(user_vectors, chunk)
        if ex_users is not None and ex_rows is not None:
            inside = (ex_rows >= start) & (ex_rows < start + chunk.shape[0])
            scores[ex_users[inside], ex_rows[inside] - start] = float("-inf")
        chunk_scores, chunk_rows_found = scores.topk(min(k, chunk.shape[0]), dim=1)
        if start == 0:
            best_scores, best_rows = chunk_scores, chunk_rows_found
            continue
        merged_scores = torch.cat([best_scores, chunk_scores], dim=1)
        merged_rows = torch.cat([best_rows, chunk_rows_found + start], dim=1)
        best_scores, pick = merged_scores.topk(k, dim=1)
        best_rows = merged_rows.gather(1, pick)
    return best_scores, best_rows


@torch.inference_mode()
def recommend(
    rec: Recommender,
    index: ItemIndex,
    queries: Sequence[Query],
    *,
    local: LocalSignals | None = None,
    candidates: CandidateIndex | None = None,
    explain_top: int = EXPLAIN_TOP,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> list[list[Recommendation]]:
    """Top-k recommendations with explanations for each query, in one batch on the device.

    With ``local`` (the site's own signals), the score is the fused one (clients/scorer/fusion.py): the
    model's score and the site's collaborative signals, standardised per user and weighted.
    With ``candidates`` only each request's candidates are scored (clients/scorer/candidates.py).
    """
    if not queries:
        return []
    evidence = _evidence(rec, index, queries)
    user_vectors = torch.cat(
        [
            rec.user_vectors([list(q.history_rows)], index.vectors)  # empty: the model's prior
            if not q.text.strip()
            else rec.user_vectors([list(range(len(labels)))[::-1]], vectors)
            for q, (labels, vectors) in zip(queries, evidence, strict=True)
        ]
    )
    retired = tuple(index.retired)  # removed while serving: never ranked
    exclude = [(q.history_rows if q.exclude_seen else ()) + retired for q in queries]
    k_max = max(q.k for q in queries)
    if candidates is not None:
        scores, rows = _two_stage(index, queries, user_vectors, exclude, k_max, local, candidates)
    elif local is None:
        scores, rows = top_k(user_vectors, index.vectors, k_max, exclude, chunk_rows)
    else:
        histories = [list(q.history_rows) for q in queries]
        model_scores = dot_scores(user_vectors, index.vectors)
        fused = fuse(
            standardised_signals(model_scores, local.index, histories, local.fusion.kappa),
            local.fusion.weights,
        )
        for row, q in enumerate(queries):
            if q.new_user:  # no history for the collaborative signals: prior and popularity
                fused[row] = new_user_scores(
                    model_scores[row], local.index, local.fusion.new_user_model
                ).to(fused.device)
        for row, rows_out in enumerate(exclude):
            fused[row, list(rows_out)] = float("-inf")
        scores, rows = fused.topk(min(k_max, fused.shape[1]), dim=1)
    results = []
    scores_host, rows_host = scores.cpu().tolist(), rows.cpu().tolist()
    for q, (labels, vectors), user_scores, user_rows in zip(
        queries, evidence, scores_host, rows_host, strict=True
    ):
        pairs = zip(user_scores, user_rows, strict=True)
        # equal scores in catalogue order, so equal inputs always give the same list
        kept = sorted(((s, r) for s, r in pairs if s != float("-inf")), key=lambda p: (-p[0], p[1]))
        kept = kept[: q.k]
        results.append(_explained(index, kept, labels, vectors, explain_top))
    return results


def _two_stage(
    index: ItemIndex,
    queries: Sequence[Query],
    user_vectors: torch.Tensor,
    exclude: Sequence[Sequence[int]],
    k_max: int,
    local: LocalSignals | None,
    candidates: CandidateIndex,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, rows) [users, k_max] from each request's candidates alone (-inf: no more)."""
    counts = local.index if local is not None else None
    nearest = candidates.nearest(user_vectors, MODEL_CANDIDATES + max(map(len, exclude)))
    out_scores = torch.full((len(queries), k_max), float("-inf"))
    out_rows = torch.zeros(len(queries), k_max, dtype=torch.long)
    for row, q in enumerate(queries):
        columns = candidate_rows(
            candidates, nearest[row], q.history_rows, len(index.items), counts, set(exclude[row])
        )
        if not len(columns):
            continue
        vectors = index.vectors[columns.to(index.vectors.device)]
        model_scores = (user_vectors[row : row + 1] @ vectors.T).float().cpu()
        if local is None:
            scores = model_scores[0]
        elif q.new_user:
            scores = new_user_scores(
                model_scores[0], local.index, local.fusion.new_user_model, columns
            )
        else:
            signals = standardised_signals(
                model_scores, local.index, [q.history_rows], local.fusion.kappa, columns
            )
            scores = fuse(signals, local.fusion.weights)[0]
        best, at = scores.topk(min(k_max, len(columns)))
        out_scores[row, : len(best)] = best
        out_rows[row, : len(best)] = columns[at]
    return out_scores, out_rows


def _evidence(
    rec: Recommender, index: ItemIndex, queries: Sequence[Query]
) -> list[tuple[list[tuple[str | None, str]], torch.Tensor]]:
    """For each query: (id, title) labels and vectors of what explanations may point to: the
    items the head reads (the most recent ``history_items``), most recent first, each once."""
    limit = rec.config.history_items
    parts = [text_parts(q, limit) if q.text.strip() else [] for q in queries]
    flat = [p for ps in parts for p in ps]
    part_vectors = rec.encode_items(flat) if flat else None
    out, offset = [], 0
    for q, ps in zip(queries, parts, strict=True):
        if q.text.strip():
            assert part_vectors is not None
            out.append(([(None, p) for p in ps], part_vectors[offset : offset + len(ps)]))
            offset += len(ps)
            continue
        rows = list(dict.fromkeys(q.history_rows[::-1][:limit]))
        labels = [(index.items[r].item_id, index.items[r].title) for r in rows]
        rows_t = torch.tensor(rows, dtype=torch.long, device=index.vectors.device)
        out.append((labels, index.vectors[rows_t]))
    return out


def _explained(
    index: ItemIndex,
    kept: list[tuple[float, int]],
    labels: list[tuple[str | None, str]],
    evidence_vectors: torch.Tensor,
    explain_top: int,
) -> list[Recommendation]:
    if not kept:
        return []
    rec_rows = torch.tensor([r for _, r in kept], device=index.vectors.device)
    unit = torch.nn.functional.normalize
    similarity = (
        unit(index.vectors[rec_rows].float(), dim=-1)
        @ unit(evidence_vectors.to(index.vectors.device).float(), dim=-1).T
    )
    top = min(explain_top, len(labels))
    sims, which = similarity.topk(top, dim=1) if top else (similarity[:, :0], similarity[:, :0])
    sims_host, which_host = sims.cpu().tolist(), which.long().cpu().tolist()
    out = []
    for (score, row), row_sims, row_which in zip(kept, sims_host, which_host, strict=True):
        item = index.items[row]
        because = tuple(
            Evidence(item_id=labels[j][0], title=labels[j][1], similarity=s)
            for s, j in zip(row_sims, row_which, strict=True)
        )
        out.append(Recommendation(item.item_id, item.title, score, because))
    return out
