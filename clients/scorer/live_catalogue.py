"""A catalogue change applied to a served snapshot: a new snapshot beside the old one.

Adding or updating an item encodes that item alone and places its vector in a copy of the
catalogue's vectors (an update in its own row, an addition in a new last row); removing one
retires its row (never ranked, unknown to requests) so that the rows of the site's counts stay
where they are. Each change gives a new ``ItemIndex`` and ``SiteScorer``; the old snapshot is
untouched, so a request that took it is answered from it alone. The site's counts know nothing
of an added item, so it is ranked by the model until a reload rebuilds them from the
interactions file (clients/scorer/fusion.py pads them).
"""

from __future__ import annotations

import dataclasses
import hashlib

import torch

from clients.scorer.item_index import ItemIndex, encode_texts, text_digest
from clients.scorer.model import SiteScorer
from shared.text import Item, item_text


def _next_hash(previous: str, change: bytes) -> str:
    """The catalogue's identity after one change: cheap, and never that of another history."""
    return hashlib.blake2b(previous.encode() + b"\0" + change, digest_size=10).hexdigest()


def with_item(snapshot: SiteScorer, item: Item) -> tuple[SiteScorer, str]:
    """The snapshot with ``item`` added (or, when its id is there, updated); and which it was."""
    index = snapshot.index
    rec = snapshot.model.rec
    text = item_text(item)
    vector = encode_texts(rec, [text], max_tokens=rec.config.max_item_tokens, progress=False)
    vector = vector.to(index.vectors.device, index.vectors.dtype)
    row = index.row_of.get(item.item_id)
    items = list(index.items)
    row_of = dict(index.row_of)
    retired = index.retired
    buffer = None
    if row is None:
        row = len(items)
        items.append(item)
        buffer = _room_for_one(index)
        buffer[row] = vector[0]  # past every served snapshot's rows: none of them sees it
        vectors = buffer[: row + 1]
        done = "added"
    else:
        items[row] = item
        vectors = index.vectors.clone()  # a served row: written in a copy only
        vectors[row] = vector[0]
        done = "updated"
    row_of[item.item_id] = row
    change = b"put\0" + item.item_id.encode() + b"\0" + text_digest(text)
    fresh = ItemIndex(
        items=items,
        vectors=vectors,
        catalogue_hash=_next_hash(index.catalogue_hash, change),
        model_fingerprint=index.model_fingerprint,
        encoded=1,
        row_of=row_of,
        retired=retired,
        buffer=buffer,
    )
    return dataclasses.replace(snapshot, index=fresh), done


def _room_for_one(index: ItemIndex) -> torch.Tensor:
    """A buffer whose first rows are ``index``'s vectors with at least one spare row: the
    index's own when it has room, else a copy with a quarter more rows (amortised: the
    catalogue is copied once per growth by 25 %, not once per item)."""
    rows = index.vectors.shape[0]
    buffer = index.buffer
    if (
        buffer is not None
        and buffer.shape[0] > rows
        and buffer.data_ptr() == index.vectors.data_ptr()
    ):
        return buffer
    grown = index.vectors.new_empty(rows + max(1024, rows // 4), index.vectors.shape[1])
    grown[:rows] = index.vectors
    return grown


def without_item(snapshot: SiteScorer, item_id: str) -> SiteScorer:
    """The snapshot with ``item_id`` retired; KeyError when the catalogue does not hold it."""
    index = snapshot.index
    row = index.row_of[item_id]
    row_of = dict(index.row_of)
    del row_of[item_id]
    fresh = ItemIndex(
        items=index.items,
        vectors=index.vectors,  # never written: the row is only retired
        catalogue_hash=_next_hash(index.catalogue_hash, b"delete\0" + item_id.encode()),
        model_fingerprint=index.model_fingerprint,
        encoded=0,
        row_of=row_of,
        retired=index.retired | {row},
        buffer=index.buffer,
    )
    return dataclasses.replace(snapshot, index=fresh)
