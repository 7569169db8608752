"""The site's own signals as the scorer uses them: built from its interactions file, fused with the
model by weights fitted on its own validation split, cached beside the item vectors.

Two collaborative indexes are built from the file: one over each user's training part (all but
the last two interactions) to fit the fusion weights on the validation split without counting its
targets, and one over every interaction, which serving uses (the site's whole knowledge). With
exact counts a third, over the training interactions before the validation cut-off, is the
time-split world the new-item fallback is fitted on (clients/scorer/new_items.py); with DP counts
it would be a third release of the same users, so the fallback stays off there.

Cache (``CACHE/local``, no pickle: safetensors and JSON, each written to a temporary file and
renamed into place):

- ``collaborative-FINGERPRINT.safetensors``: an index, keyed by what it counts (each user's item
  ids and times, and the DP settings; clients/scorer/collaborative.py), checked against the
  catalogue it was built over;
- ``fusion-MODEL-FINGERPRINT-CATALOGUE.json``: the weights fitted with that model over that index
  and catalogue;
- ``interactions-KEY.json``: which index an interactions file gives, KEY being a hash of the
  file's bytes, the catalogue's ids and the DP settings. A repeated ``fedxrec rank`` on the same
  files finds its index and weights through it without reading the interactions again.

A damaged or unfitting file is reported (a logged warning) and rebuilt, never trusted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients.scorer.collaborative import (
    CollaborativeIndex,
    build_collaborative_index,
    catalogue_ids,
    index_fingerprint,
    interactions_fingerprint,
)
from clients.scorer.count_releases import CountReleases, default_count_ledger
from clients.scorer.defaults import DEFAULT_MAX_ITEMS
from clients.scorer.fusion import (
    FALLBACK,
    FIT_USERS,
    FusionWeights,
    fit_fusion,
    fit_new_user_blend,
)
from clients.scorer.item_index import ItemIndex
from clients.scorer.new_items import fit_new_item_fallback, time_split_world
from clients.scorer.private_counts import CountPrivacy
from shared.config import default_delta
from shared.data import PlatformData, build_platform, find_file, read_interactions
from shared.model import Recommender
from shared.text import Item

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "fedxrec-interactions-1"
COLLABORATIVE_INDEX, FUSION_WEIGHTS = "collaborative index", "fusion weights"


@dataclass(frozen=True)
class LocalSignals:
    index: CollaborativeIndex  # over every interaction of the file
    fusion: FusionWeights  # fitted on the validation split (training-part index)
    interactions_file: Path
    from_cache: tuple[str, ...] = ()  # COLLABORATIVE_INDEX and/or FUSION_WEIGHTS, when read back

    # with DP counts: the ε of every release of these interactions' counts (the ledger's sum)
    count_epsilon_total: float | None = None

    def describe(self) -> dict[str, Any]:
        privacy = self.index.privacy  # None: exact counts
        if privacy is not None and self.count_epsilon_total is not None:
            privacy = {**privacy, "epsilon_of_all_releases": self.count_epsilon_total}
        return {
            "interactions_file": str(self.interactions_file),
            "interactions_hash": self.index.fingerprint,
            **self.fusion.to_dict(),
            "count_privacy": privacy,
        }


def default_interactions_file(items_file: Path) -> Path | None:
    """The site's interactions file beside its items file, if there is one."""
    try:
        return find_file(items_file.parent, "interactions")
    except ValueError:
        return None


def load_local_signals(
    rec: Recommender,
    item_index: ItemIndex,
    interactions_file: Path,
    *,
    model_fingerprint: str,
    cache_dir: Path | None,
    local_epsilon: float = 0.0,
    local_max_items: int = DEFAULT_MAX_ITEMS,
    count_releases: CountReleases | None = None,
    removed_items: frozenset[str] = frozenset(),
) -> LocalSignals:
    """Read the interactions, build (or read back) the index and the fitted weights (cached in
    ``cache_dir/local``, beside the item vectors).

    ``local_epsilon`` > 0 makes the counts user-level DP (clients/scorer/private_counts.py): the
    two indexes (the fit's and serving's) are two releases of the same users under that one ε,
    and each is drawn once and kept in the cache, so a restart does not release them again
    (deleting the cache draws them anew: another release, which this ε does not cover).
    Every draw is first written in ``count_releases`` (default: the machine's count ledger),
    which refuses a second draw of the same interactions unless it allows new releases.
    """
    cache_dir = cache_dir / "local" if cache_dir else None
    if local_epsilon and cache_dir is None:
        raise ValueError(
            "--local-epsilon needs the cache: the noisy counts are drawn once and kept, and "
            "without a cache every start would release them again; drop --no-cache"
        )
    items = list(item_index.items)
    key = tried = tried_data = serving = None
    if cache_dir is not None:  # the same file seen before: its index and weights, unread
        key = _file_key(interactions_file, items, local_epsilon, local_max_items)
        tried, tried_data = _read_manifest(cache_dir / f"interactions-{key}.json")
        serving = _load_index(cache_dir, tried, items) if tried else None
    # (each cache file is read at most once: a damaged one is reported once, then rebuilt)
    weights = _read_weights(cache_dir, model_fingerprint, serving) if serving else None
    if local_epsilon and count_releases is None:
        count_releases = CountReleases(default_count_ledger())
    if serving is not None and weights is not None:
        total = count_releases.total_epsilon(tried_data) if count_releases and tried_data else None
        return LocalSignals(
            serving, weights, interactions_file, (COLLABORATIVE_INDEX, FUSION_WEIGHTS), total
        )
    known = set(item_index.row_of)
    interactions = [  # those of items removed from the catalogue are left out, not refused
        i for i in read_interactions(interactions_file, known | removed_items) if i.item_id in known
    ]
    everyone = build_platform("site", items, interactions, min_user_interactions=1)
    data_key = interactions_fingerprint(everyone.sequences, everyone)
    privacy = draw = None
    if local_epsilon:
        privacy = CountPrivacy(
            local_epsilon, default_delta(everyone.num_users), local_max_items, releases=2
        )
        draw = _ReleaseGate(count_releases, data_key, privacy, str(cache_dir))
    from_cache: tuple[str, ...] = (COLLABORATIVE_INDEX,)
    if serving is None:
        serving, index_cached = _cached_index(
            everyone, everyone.sequences, cache_dir, privacy, tried=tried, draw=draw
        )
        from_cache = from_cache if index_cached else ()
        weights = _read_weights(cache_dir, model_fingerprint, serving)
    if weights is None:
        fit_data = build_platform("site", items, interactions)
        weights = _fit(rec, item_index, fit_data, cache_dir, privacy, draw)
        _write_json(_weights_path(cache_dir, model_fingerprint, serving), weights.to_dict())
    else:
        from_cache += (FUSION_WEIGHTS,)
    if key is not None:  # the next load of this file finds its index and weights without it
        manifest = {"format": MANIFEST_FORMAT, "serving": serving.fingerprint, "data": data_key}
        _write_json(cache_dir / f"interactions-{key}.json", manifest)
    total = count_releases.total_epsilon(data_key) if count_releases and privacy else None
    return LocalSignals(serving, weights, interactions_file, from_cache, total)


class _ReleaseGate:
    """Called before a DP index is drawn: the load's release is recorded once (its two indexes
    are one release under one ε), and refused if these counts were released before."""

    def __init__(
        self, releases: CountReleases | None, data_key: str, privacy: CountPrivacy, where: str
    ) -> None:
        self.releases, self.data_key, self.privacy, self.where = releases, data_key, privacy, where
        self.recorded = False

    def __call__(self) -> None:
        if self.releases is not None and not self.recorded:
            self.releases.record(self.data_key, self.privacy, self.where)
            self.recorded = True


def _fit(
    rec: Recommender,
    item_index: ItemIndex,
    data: PlatformData,
    cache_dir: Path | None,
    privacy: CountPrivacy | None,
    draw: Callable[[], None] | None = None,
) -> FusionWeights:
    training, _ = _cached_index(
        data, [data.train_sequence(u) for u in range(data.num_users)], cache_dir, privacy, draw=draw
    )
    pairs = [data.split(u, "validation") for u in range(min(data.num_users, FIT_USERS))]
    histories, targets = [h for h, _ in pairs], [t for _, t in pairs]
    scores = rec.scores(histories, item_index.vectors)
    weights = fit_fusion(scores, training, histories, targets)
    if privacy is None:  # (DP counts: the world would be another release; module docstring)
        world = time_split_world(
            data, lambda sequences: build_collaborative_index(data, sequences), users=FIT_USERS
        )
        weights = fit_new_item_fallback(scores, weights, world, training, histories, targets)
    else:
        weights = dataclasses.replace(
            weights, new_items_fit={"not_fitted": "DP counts (a third release)"}
        )
    prior = rec.scores([[]], item_index.vectors)[0]  # the model before it knows the user
    return dataclasses.replace(weights, new_user_model=fit_new_user_blend(prior, training, targets))


def _index_path(cache_dir: Path, fingerprint: str) -> Path:
    return cache_dir / f"collaborative-{fingerprint}.safetensors"


def _load_index(
    cache_dir: Path, fingerprint: str, items: Sequence[Item]
) -> CollaborativeIndex | None:
    return CollaborativeIndex.load(_index_path(cache_dir, fingerprint), fingerprint, items)


def _cached_index(
    data: PlatformData,
    sequences: list[list[int]],
    cache_dir: Path | None,
    privacy: CountPrivacy | None,
    *,
    tried: str | None = None,
    draw: Callable[[], None] | None = None,
) -> tuple[CollaborativeIndex, bool]:
    """The index of ``sequences`` and whether it came from the cache (``tried``: a fingerprint
    whose cache file was read already and did not fit)."""
    fingerprint = index_fingerprint(sequences, data, privacy)
    readable = cache_dir is not None and fingerprint != tried
    cached = _load_index(cache_dir, fingerprint, data.items) if readable else None
    if cached is not None:
        return cached, True
    if privacy is not None and draw is not None:
        draw()  # recorded (or refused) before any noise is drawn
    index = build_collaborative_index(data, sequences, privacy=privacy)
    if cache_dir:
        index.save(_index_path(cache_dir, fingerprint))
    return index, False


def _file_key(path: Path, items: Sequence[Item], local_epsilon: float, local_max_items: int) -> str:
    """What an interactions file's index depends on besides its content's meaning: its bytes,
    the catalogue's ids (which rows exist) and the DP settings."""
    digest = hashlib.blake2b(digest_size=12)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    settings = {"local_epsilon": local_epsilon, "local_max_items": local_max_items}
    digest.update(json.dumps([catalogue_ids(items), settings], sort_keys=True).encode())
    return digest.hexdigest()


def _read_manifest(path: Path) -> tuple[str | None, str | None]:
    """The serving index's fingerprint recorded for this file key and the interactions' content
    key (None, None: no usable manifest)."""
    saved = _read_json(path)
    if saved is None:
        return None, None
    fingerprint, data = saved.get("serving"), saved.get("data")
    if saved.get("format") != MANIFEST_FORMAT or not isinstance(fingerprint, str):
        log.warning("ignoring the cache file %s: not a fedxrec interactions manifest", path)
        return None, None
    return fingerprint, data if isinstance(data, str) else None


def _weights_path(cache_dir: Path | None, model: str, serving: CollaborativeIndex) -> Path | None:
    if cache_dir is None:
        return None
    # v3: with the new-item fallback (older files: refitted)
    return cache_dir / f"fusion-v3-{model}-{serving.fingerprint}-{serving.catalogue}.json"


def _read_weights(
    cache_dir: Path | None, model: str, serving: CollaborativeIndex
) -> FusionWeights | None:
    path = _weights_path(cache_dir, model, serving)
    saved = _read_json(path) if path else None
    if saved is None:
        return None
    try:
        new_items = saved["new_items"]
        fallback = {}
        if new_items["fallback"] != "off":
            fallback = dict(zip(FALLBACK, (new_items["scale"], new_items["offset"]), strict=True))
        weights = FusionWeights(
            {str(k): float(v) for k, v in {**saved["weights"], **fallback}.items()},
            float(saved["validation_ndcg@10"]),
            float(saved["model_only_validation_ndcg@10"]),
            int(saved["fit_on_users"]),
            math.inf if saved.get("mix_gain_z") is None else float(saved["mix_gain_z"]),
            float(saved["kappa"]),
            float(saved["new_user_model_weight"]),
            {
                str(k): v
                for k, v in new_items.items()
                if k not in ("fallback", "scale", "offset") and isinstance(v, int | float | str)
            },
        )
        unknown = set(weights.weights) - {"model", *serving.signals, *FALLBACK}
        values = [*weights.weights.values(), weights.kappa, weights.new_user_model]
        if unknown or not all(math.isfinite(w) and w >= 0 for w in values):
            raise ValueError(f"weights {weights.weights} do not fit the signals")
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        log.warning("ignoring the damaged fusion weights %s (%s); refitting them", path, err)
        return None  # refitted, never trusted
    return weights


def _read_json(path: Path) -> dict[str, Any] | None:
    """A cache file's JSON object; None when it is missing or damaged (with a warning)."""
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        log.warning("ignoring the damaged cache file %s (%s); rebuilding it", path, err)
        return None
    if not isinstance(saved, dict):
        log.warning("ignoring the damaged cache file %s (not a JSON object); rebuilding it", path)
        return None
    return saved


def _write_json(path: Path | None, value: dict[str, Any]) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(value, fh)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
