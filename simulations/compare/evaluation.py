"""How a comparison measures a model: validation curves and test ranks, of the model and of the
site's final ranking (the model fused with the site's own counts).

Every model is an adapter loaded into the process's one recommender
(``shared.model.process_recommender``); catalogue vectors are remembered per LoRA weights, so the
same adapter is never encoded twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from clients.federation.evaluation import split_ranks
from clients.scorer.collaborative import CollaborativeIndex
from clients.scorer.fusion import fit_site_fusion, fused_split_ranks, training_index
from clients.scorer.private_counts import CountPrivacy
from shared.adapter import set_adapter_arrays
from shared.config import FedxrecConfig, default_delta
from shared.data import PlatformData
from shared.metrics import ranking_metrics
from shared.model import Recommender, pick_device, process_recommender
from simulations.compare.data import counted_before, new_item_cutoff, platform_slices
from simulations.compare.records import SLICE_USERS
from simulations.compare.tested import Tested

Arrays = dict[str, np.ndarray]


class Evaluator:
    """The platforms' evaluation slices, curve users and collaborative indexes, and the model."""

    def __init__(self, cfg: FedxrecConfig, platforms: list[PlatformData], curve_users: int):
        self.cfg = cfg
        self.device = pick_device(cfg.train.device)
        self.slices = {p.name: platform_slices(p) for p in platforms}
        # The first N users, as the coordinator's per-round validation takes them (a fixed
        # sample: MovieLens platforms list their users in random order).
        self.curve_users = {
            p.name: list(range(min(curve_users or p.num_users, p.num_users))) for p in platforms
        }
        self.cutoffs = {p.name: new_item_cutoff(p) for p in platforms}
        self._local: dict[str, CollaborativeIndex] = {}
        self._before: dict[str, CollaborativeIndex] = {}

    def model(self, arrays: Arrays) -> Recommender:
        rec = process_recommender(self.cfg.model, device=self.device)
        set_adapter_arrays(rec, arrays)
        return rec

    def validation_ndcg(self, arrays: Arrays, data: PlatformData) -> float:
        """Validation NDCG@10 on the platform's curve users (what the coordinator reports)."""
        rec = self.model(arrays)
        vectors = rec.catalogue_vectors(data.item_texts)
        ranks = split_ranks(rec, data, "validation", self.curve_users[data.name], vectors)
        return ranking_metrics(ranks)["ndcg@10"]

    def test(self, arrays: Arrays, platforms: list[PlatformData], hybrid: bool) -> Tested:
        """Test ranks of the model on ``platforms`` and, with ``hybrid``, of the site's final
        ranking (fusion weights fitted on the validation split)."""
        rec = self.model(arrays)
        tested = Tested()
        for data in platforms:
            vectors: torch.Tensor = rec.catalogue_vectors(data.item_texts)
            ranks = split_ranks(rec, data, "test", None, vectors)
            tested.add(data.name, ranks, self.slices[data.name])
            if hybrid:
                weights = fit_site_fusion(
                    rec, data, self.local(data), vectors, build=self.world_counts(data)
                )
                ranks = fused_split_ranks(rec, data, self.local(data), vectors, weights)
                # the new-item slice is ranked as on the cut-off day: the same fit, the counts
                # of the interactions before it (the new items have none)
                new_users = self.slices[data.name]["new_items"]
                new_ranks = fused_split_ranks(
                    rec, data, self.counted_before(data), vectors, weights, users=new_users
                )
                tested.add_hybrid(
                    data.name,
                    ranks,
                    self.slices[data.name],
                    weights.to_dict(),
                    ranked_apart={"new_items": new_ranks},
                )
        return tested

    def test_each(self, adapters: dict[str, Arrays], platforms: list[PlatformData], hybrid: bool):
        """Each platform tested with its own adapter."""
        tested = Tested()
        for data in platforms:
            tested.update(self.test(adapters[data.name], [data], hybrid))
        return tested

    def local(self, data: PlatformData) -> CollaborativeIndex:
        """The site's own collaborative index (training interactions; DP with
        privacy.local_epsilon): one draw of the noise per platform, fused by every method."""
        if data.name not in self._local:
            self._local[data.name] = training_index(data, self._count_privacy(data), seed=0)
        return self._local[data.name]

    def counted_before(self, data: PlatformData) -> CollaborativeIndex:
        """The site's index over its training interactions before the new-item cut-off."""
        if data.name not in self._before:
            cutoff = self.cutoffs[data.name]
            sequences = counted_before(data, cutoff) if cutoff is not None else None
            self._before[data.name] = training_index(
                data, self._count_privacy(data), seed=0, sequences=sequences
            )
        return self._before[data.name]

    def world_counts(
        self, data: PlatformData
    ) -> Callable[[Sequence[Sequence[int]]], CollaborativeIndex]:
        """How the fit's time-split world counts (clients/scorer/new_items.py): as the site's
        own index does, exact or DP."""
        return lambda sequences: training_index(
            data, self._count_privacy(data), seed=0, sequences=sequences
        )

    def _count_privacy(self, data: PlatformData) -> CountPrivacy | None:
        privacy = self.cfg.privacy
        if not privacy.local_epsilon:
            return None
        return CountPrivacy(
            privacy.local_epsilon, default_delta(data.num_users), privacy.local_max_items
        )

    def slice_users(self) -> dict[str, dict[str, Any]]:
        return {n: {s: self.slices[n][s] for s in SLICE_USERS} for n in self.slices}
