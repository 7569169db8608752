"""A site's catalogue as vectors: the model's item vectors (the adapted encoder, then the head's
adaptor), cached on disk.

Vectors are float32 rows, one per catalogue item in catalogue order, kept on the scoring device. Encoding sorts the texts by length so each batch pads to its own longest text (no
padding waste), and shows a progress bar when it takes more than a couple of seconds.

Cache: one safetensors file per model fingerprint (encoder weights + tokenizer, adapter, token
limit, precision — see ``ScorerModel.fingerprint``) in the cache folder, holding the vectors and a
digest of each item's text. A vector depends only on the model and the item's text, so:

- same model, same catalogue: every vector is read back, nothing is encoded;
- same model, edited catalogue: only new or changed items are encoded;
- new adapter or encoder: another fingerprint, so every vector is stale and re-encoded.

Files of other fingerprints are pruned beyond the most recent few. Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from shared.model import Recommender
from shared.text import Item, item_text

log = logging.getLogger(__name__)

CACHE_FORMAT = "fedxrec-item-index-1"
CACHE_FILES_KEPT = 4  # fingerprints kept per cache folder (current + a few recent adapters)
DIGEST_BYTES = 16
PROGRESS_DELAY_S = 2.0  # a progress bar appears only when encoding takes longer than this


class UnknownItemError(ValueError):
    """A request names item ids that are not in this site's catalogue."""


@dataclass(frozen=True)
class ItemIndex:
    items: Sequence[Item]
    vectors: torch.Tensor  # [items, dim] float32 item vectors, on the scoring device
    catalogue_hash: str
    model_fingerprint: str
    encoded: int  # items encoded while building this index; the others came from the cache
    row_of: dict[str, int] = field(repr=False, default_factory=dict)
    # rows of items removed while the service runs: never ranked, unknown to requests
    retired: frozenset[int] = frozenset()
    # live additions: ``vectors`` is the head of this larger buffer, whose spare rows take the
    # next items without copying the catalogue (rows past ``vectors`` are no snapshot's)
    buffer: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.row_of:
            self.row_of.update(
                {
                    item.item_id: row
                    for row, item in enumerate(self.items)
                    if row not in self.retired
                }
            )

    def __len__(self) -> int:
        return len(self.items) - len(self.retired)

    def rows_for(self, item_ids: Sequence[str]) -> list[int]:
        """Catalogue rows of ``item_ids``, refusing any id this catalogue does not hold."""
        unknown = [i for i in dict.fromkeys(item_ids) if i not in self.row_of]
        if unknown:
            shown = ", ".join(repr(i) for i in unknown[:5])
            more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
            raise UnknownItemError(
                f"unknown item id(s) {shown}{more}: not in this site's catalogue of "
                f"{len(self)} items; use the item_id column of the items file"
            )
        return [self.row_of[i] for i in item_ids]


def text_digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=DIGEST_BYTES).digest()


def catalogue_hash(items: Sequence[Item]) -> str:
    """Identity of a catalogue: its ids and texts, in order."""
    digest = hashlib.blake2b(digest_size=10)
    for item in items:
        digest.update(item.item_id.encode("utf-8") + b"\0" + text_digest(item_text(item)))
    return digest.hexdigest()


def default_cache_dir(items_file: str | Path) -> Path:
    """``$FEDXREC_CACHE_DIR`` or ``~/.cache/fedxrec/item-index``, one sub-folder per items file
    (so two catalogues of one machine never evict each other's vectors)."""
    root = os.environ.get("FEDXREC_CACHE_DIR") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "fedxrec", "item-index"
    )
    key = hashlib.blake2b(str(Path(items_file).resolve()).encode(), digest_size=6).hexdigest()
    return Path(root) / key


def default_batch_size(device: torch.device) -> int:
    # Item texts are short (<= max_item_tokens): big batches keep a GPU busy, small ones keep a
    # CPU's attention matrices in cache.
    return 512 if device.type == "cuda" else 64


def encode_texts(
    rec: Recommender,
    texts: Sequence[str],
    *,
    max_tokens: int,
    batch_size: int | None = None,
    progress: bool = True,
    desc: str = "encoding items",
) -> torch.Tensor:
    """Item vectors of ``texts`` (float32, on ``rec.device``), shortest texts batched together.

    ``Recommender.encode`` groups by length within one call; the texts are sorted here once and
    fed in slices of a few batches so a progress bar can follow a long catalogue.
    """
    out = torch.empty(len(texts), rec.dim, device=rec.device)
    if not texts:
        return out
    batch_size = batch_size or default_batch_size(rec.device)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    slice_size = batch_size * 8
    with tqdm(
        total=len(texts),
        desc=desc,
        unit="item",
        delay=PROGRESS_DELAY_S,
        disable=not progress,
        file=sys.stderr,
    ) as bar:
        for start in range(0, len(order), slice_size):
            rows = order[start : start + slice_size]
            vectors = rec.encode([texts[i] for i in rows], max_tokens, batch_size=batch_size)
            out[torch.tensor(rows, device=rec.device)] = rec.item_vectors(vectors)
            bar.update(len(rows))
    return out


def build_item_index(
    rec: Recommender,
    items: Sequence[Item],
    *,
    model_fingerprint: str,
    cache_dir: Path | None,
    batch_size: int | None = None,
    progress: bool = True,
) -> ItemIndex:
    """Index ``items`` with ``rec``, reusing every cached vector that is still valid."""
    texts = [item_text(item) for item in items]
    digests = [text_digest(t) for t in texts]
    cat_hash = catalogue_hash(items)
    cache_file = cache_dir / f"{model_fingerprint}.safetensors" if cache_dir else None
    cached_vectors, cached_row = _read_cache(cache_file, rec.dim) if cache_file else (None, {})

    vectors = torch.empty(len(items), rec.dim, device=rec.device)
    hits = [(row, cached_row[d]) for row, d in enumerate(digests) if d in cached_row]
    missing = [row for row, d in enumerate(digests) if d not in cached_row]
    if hits and cached_vectors is not None:
        rows, cache_rows = zip(*hits, strict=True)
        vectors[torch.tensor(rows, device=rec.device)] = cached_vectors[list(cache_rows)].to(
            rec.device
        )
    if missing:
        encoded = encode_texts(
            rec,
            [texts[r] for r in missing],
            max_tokens=rec.config.max_item_tokens,
            batch_size=batch_size,
            progress=progress,
        )
        vectors[torch.tensor(missing, device=rec.device)] = encoded
        if cache_file:
            _write_cache(cache_file, vectors, digests, model_fingerprint, cat_hash)
    log.info("item index: %d items, %d encoded, %d from cache", len(items), len(missing), len(hits))
    return ItemIndex(
        items=list(items),
        vectors=vectors,
        catalogue_hash=cat_hash,
        model_fingerprint=model_fingerprint,
        encoded=len(missing),
    )


def _read_cache(path: Path, dim: int) -> tuple[torch.Tensor | None, dict[bytes, int]]:
    """(cached vectors, text digest -> their row); an unreadable or foreign file counts as empty."""
    if not path.is_file():
        return None, {}
    try:
        tensors = load_file(str(path))
        vectors, digests = tensors["vectors"], tensors["text_digests"]
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        log.warning("ignoring unreadable item cache %s (%s); re-encoding", path, err)
        return None, {}
    if (
        vectors.ndim != 2
        or vectors.shape[1] != dim
        or digests.shape != (vectors.shape[0], DIGEST_BYTES)
        or vectors.dtype != torch.float32
        or digests.dtype != torch.uint8
    ):
        log.warning("ignoring item cache %s: it does not fit this model; re-encoding", path)
        return None, {}
    raw = digests.numpy().tobytes()
    rows = {raw[i * DIGEST_BYTES : (i + 1) * DIGEST_BYTES]: i for i in range(len(vectors))}
    return vectors, rows


def _write_cache(
    path: Path,
    vectors: torch.Tensor,
    digests: list[bytes],
    fingerprint: str,
    cat_hash: str,
) -> None:
    """Write atomically (a reader never sees half a file); a failed write only costs speed."""
    tmp = ""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        digest_tensor = torch.frombuffer(bytearray(b"".join(digests)), dtype=torch.uint8)
        save_file(
            {
                "vectors": vectors.detach().float().cpu().contiguous(),
                "text_digests": digest_tensor.reshape(len(digests), DIGEST_BYTES),
            },
            tmp,
            metadata={
                "format": CACHE_FORMAT,
                "model_fingerprint": fingerprint,
                "catalogue_hash": cat_hash,
            },
        )
        os.replace(tmp, path)
        _prune(path.parent, keep=path)
    except (OSError, SafetensorError) as err:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        log.warning("could not write the item cache %s (%s); the next start re-encodes", path, err)


def _prune(folder: Path, keep: Path) -> None:
    files = sorted(folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [f for f in files if f != keep][CACHE_FILES_KEPT - 1 :]:
        old.unlink(missing_ok=True)
