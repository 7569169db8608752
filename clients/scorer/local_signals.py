"""The site's own signals as the scorer uses them: built from its interactions file, fused with the
model by weights fitted on its own validation split, cached beside the item vectors.

Two collaborative indexes are built from the file: one over each user's training part (all but
the last two interactions) to fit the fusion weights on the validation split without counting its
targets, and one over every interaction, which serving uses (the site's whole knowledge).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients.scorer.collaborative import (
    CollaborativeIndex,
    build_collaborative_index,
    index_fingerprint,
)
from clients.scorer.defaults import DEFAULT_MAX_ITEMS
from clients.scorer.fusion import FIT_USERS, FusionWeights, fit_fusion
from clients.scorer.item_index import ItemIndex
from clients.scorer.private_counts import CountPrivacy
from shared.config import default_delta
from shared.data import PlatformData, build_platform, find_file, read_interactions
from shared.model import Recommender


@dataclass(frozen=True)
class LocalSignals:
    index: CollaborativeIndex  # over every interaction of the file
    fusion: FusionWeights  # fitted on the validation split (training-part index)
    interactions_file: Path

    def describe(self) -> dict[str, Any]:
        return {
            "interactions_file": str(self.interactions_file),
            "interactions_hash": self.index.fingerprint,
            **self.fusion.to_dict(),
            "count_privacy": self.index.privacy,  # None: exact counts
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
) -> LocalSignals:
    """Read the interactions, build (or read back) the index and the fitted weights (cached in
    ``cache_dir/local``, beside the item vectors).

    ``local_epsilon`` > 0 makes the counts user-level DP (clients/scorer/private_counts.py): the
    two indexes (the fit's and serving's) are two releases of the same users under that one ε,
    and each is drawn once and kept in the cache, so a restart does not release them again
    (deleting the cache draws them anew: another release, which this ε does not cover).
    """
    cache_dir = cache_dir / "local" if cache_dir else None
    if local_epsilon and cache_dir is None:
        raise ValueError(
            "--local-epsilon needs the cache: the noisy counts are drawn once and kept, and "
            "without a cache every start would release them again; drop --no-cache"
        )
    interactions = read_interactions(interactions_file, set(item_index.row_of))
    items = list(item_index.items)
    everyone = build_platform("site", items, interactions, min_user_interactions=1)
    privacy = None
    if local_epsilon:
        privacy = CountPrivacy(
            local_epsilon, default_delta(everyone.num_users), local_max_items, releases=2
        )
    serving = _cached_index(everyone, everyone.sequences, cache_dir, privacy)
    weights = _read_weights(cache_dir, model_fingerprint, serving.fingerprint)
    if weights is None:
        fit_data = build_platform("site", items, interactions)
        weights = _fit(rec, item_index, fit_data, cache_dir, privacy)
        _write_weights(cache_dir, model_fingerprint, serving.fingerprint, weights)
    return LocalSignals(serving, weights, interactions_file)


def _fit(
    rec: Recommender,
    item_index: ItemIndex,
    data: PlatformData,
    cache_dir: Path | None,
    privacy: CountPrivacy | None,
) -> FusionWeights:
    training = _cached_index(
        data, [data.train_sequence(u) for u in range(data.num_users)], cache_dir, privacy
    )
    pairs = [data.split(u, "validation") for u in range(min(data.num_users, FIT_USERS))]
    histories = [h for h, _ in pairs]
    return fit_fusion(
        rec.scores(histories, item_index.vectors), training, histories, [t for _, t in pairs]
    )


def _cached_index(
    data: PlatformData,
    sequences: list[list[int]],
    cache_dir: Path | None,
    privacy: CountPrivacy | None,
) -> CollaborativeIndex:
    fingerprint = index_fingerprint(sequences, data, privacy)
    path = cache_dir / f"collaborative-{fingerprint}.safetensors" if cache_dir else None
    cached = CollaborativeIndex.load(path, fingerprint) if path else None
    if cached is not None:
        return cached
    index = build_collaborative_index(data, sequences, privacy=privacy)
    if path:
        index.save(path)
    return index


def _weights_path(cache_dir: Path | None, model: str, interactions: str) -> Path | None:
    return cache_dir / f"fusion-{model}-{interactions}.json" if cache_dir else None


def _read_weights(cache_dir: Path | None, model: str, interactions: str) -> FusionWeights | None:
    path = _weights_path(cache_dir, model, interactions)
    if path is None or not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        return FusionWeights(
            {k: float(v) for k, v in saved["weights"].items()},
            float(saved["validation_ndcg@10"]),
            float(saved["model_only_validation_ndcg@10"]),
            int(saved["fit_on_users"]),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None  # refitted, never trusted


def _write_weights(
    cache_dir: Path | None, model: str, interactions: str, weights: FusionWeights
) -> None:
    path = _weights_path(cache_dir, model, interactions)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".fusion.")
    with os.fdopen(fd, "w") as fh:
        json.dump(weights.to_dict(), fh)
    os.replace(tmp, path)
