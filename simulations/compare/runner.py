"""Running a comparison: every method of every seed, on the same platforms and split."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from clients.federation.evaluation import split_ranks
from clients.federation.training import trainable_users
from clients.scorer.collaborative import CollaborativeIndex
from clients.scorer.fusion import hybrid_split_ranks, training_index
from clients.scorer.private_counts import CountPrivacy
from shared.adapter import get_adapter_arrays, set_adapter_arrays
from shared.config import FedxrecConfig, default_delta
from shared.data import PlatformData
from shared.metrics import ranking_metrics
from shared.model import Recommender, build_recommender, pick_device
from simulations.baselines import BASELINES, Scorer, baseline_ranks
from simulations.compare.data import platform_slices, pool_platforms, slice_metrics
from simulations.compare.plan import (
    HYBRID_METHODS,
    HYBRID_SUFFIX,
    ComparePlan,
    eps_text,
    run_key,
    seed_plan,
    spent_text,
    unseen_runs,
)
from simulations.compare.tested import Tested, merge_rounds
from simulations.inprocess import federate
from simulations.report import _commit

Log = Callable[[str], None]
RecFactory = Callable[[int], Recommender]
Arrays = OrderedDict[str, np.ndarray]


def default_recommender_factory(cfg: FedxrecConfig) -> RecFactory:
    device = pick_device(cfg.train.device)

    def make(seed: int) -> Recommender:
        return build_recommender(cfg.model, device=device, seed=seed)

    return make


class Experiment:
    """Runs a ComparePlan on loaded platforms; ``results()`` is results.json's content."""

    def __init__(
        self,
        plan: ComparePlan,
        platforms: list[PlatformData],
        make_rec: RecFactory,
        *,
        log: Log = print,
        on_run: Callable[[Experiment], None] | None = None,
        command: str = "",
        device: str = "",
        previous_runs: list[dict[str, Any]] | None = None,
    ) -> None:
        if len({p.name for p in platforms}) != len(platforms):
            raise ValueError("two platforms have the same name")
        self.plan, self.platforms, self.make_rec = plan, platforms, make_rec
        self.by_name = {p.name: p for p in platforms}
        if plan.unseen is not None and plan.unseen not in self.by_name:
            raise ValueError(
                f"--unseen {plan.unseen}: no such platform (have {', '.join(self.by_name)})"
            )
        self.log_line, self.on_run = log, on_run
        self.command, self.device = command, device
        self.slices = {p.name: platform_slices(p) for p in platforms}
        self.curve_users = {p.name: self._curve_sample(p) for p in platforms}
        self.runs: list[dict[str, Any]] = []
        self.started = time.perf_counter()
        self.commit = _commit()
        self.round_zero: dict[str, float] = {}
        self.units_total = self._units_planned()
        self.units_done = 0
        self.previous = {r["key"]: r for r in previous_runs or []}
        self._seed_model: tuple[int, Recommender, OrderedDict] | None = None
        self._vectors: dict[str, torch.Tensor] = {}
        self._local_indexes: dict[str, CollaborativeIndex] = {}

    # -- progress --------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        minutes = (time.perf_counter() - self.started) / 60
        self.log_line(f"[compare {minutes:5.1f} min] {message}")

    def _units(self, trained: Iterable[PlatformData]) -> int:
        """Training work of a run: rounds × users trained (what the ETA is estimated from)."""
        return self.plan.cfg.federation.rounds * sum(len(trainable_users(p)) for p in trained)

    def _units_planned(self) -> int:
        per_seed = sum(self._units(trained) for _, _, trained in self._seed_plan())
        return per_seed * len(self.plan.seeds)

    def _eta(self) -> str:
        if not self.units_done:
            return ""
        elapsed = time.perf_counter() - self.started
        left = elapsed / self.units_done * (self.units_total - self.units_done)
        return f"; about {left / 60:.0f} min left"

    def unseen_runs(self) -> bool:
        return unseen_runs(self.plan, self.platforms)

    def _seed_plan(self) -> list[tuple[str, float, list[PlatformData]]]:
        return seed_plan(self.plan, self.platforms)

    def _curve_sample(self, data: PlatformData) -> list[int]:
        # The first N users, as the Flower path's per-round validation takes them (a fixed
        # sample: MovieLens platforms list their users in random order).
        return list(range(min(self.plan.curve_users or data.num_users, data.num_users)))

    # -- evaluation ------------------------------------------------------------------------------
    def _item_vectors(self, rec: Recommender, data: PlatformData) -> torch.Tensor:
        """The catalogue's vectors under the current adapter, encoded once per adapter.

        The curve's last validation and the test ranking share one encoding; the cache is
        emptied whenever the adapter changes (``_train``'s start and every round).
        """
        if data.name not in self._vectors:
            self._vectors[data.name] = rec.encode_items(data.item_texts)
        return self._vectors[data.name]

    def _validation_ndcg(self, rec: Recommender, data: PlatformData) -> float:
        vectors = self._item_vectors(rec, data)
        ranks = split_ranks(rec, data, "validation", self.curve_users[data.name], vectors)
        return ranking_metrics(ranks)["ndcg@10"]

    def _test(self, rec: Recommender, platforms: list[PlatformData], method: str) -> Tested:
        """Test ranks of the model on ``platforms``, and of the site's final ranking (the model
        fused with the site's own signals) when ``method`` has a "+ local" variant."""
        tested = Tested()
        for data in platforms:
            vectors = self._item_vectors(rec, data)
            ranks = split_ranks(rec, data, "test", None, vectors)
            tested.add(data.name, ranks, self.slices[data.name])
            if method in HYBRID_METHODS:
                local = self._local(data)
                ranks, weights = hybrid_split_ranks(rec, data, local, vectors)
                tested.add_hybrid(data.name, ranks, self.slices[data.name], weights.to_dict())
        return tested

    def _local(self, data: PlatformData) -> CollaborativeIndex:
        if data.name not in self._local_indexes:
            privacy = self.plan.cfg.privacy
            counts = None
            if privacy.local_epsilon:
                counts = CountPrivacy(
                    privacy.local_epsilon, default_delta(data.num_users), privacy.local_max_items
                )
            # one draw of the noise per platform: every method fuses the same noisy counts
            self._local_indexes[data.name] = training_index(data, counts, seed=0)
        return self._local_indexes[data.name]

    def _record(self, run: dict[str, Any]) -> None:
        self.runs.append(run)
        summary = "  ".join(
            f"{p} {m['all']['ndcg@10']:.4f}" for p, m in run["test"].items() if m["all"]["users"]
        )
        self.log(f"{run['key']}: test NDCG@10 {summary} ({run['seconds']:.0f} s){self._eta()}")
        if self.on_run:
            self.on_run(self)

    # -- methods ---------------------------------------------------------------------------------
    def run(self) -> None:
        plan = self.plan
        self.log(
            f"{len(self.platforms)} platforms ("
            + ", ".join(
                f"{p.name}: {p.num_users} users, {len(p.items)} items" for p in self.platforms
            )
            + f"), seeds {plan.seeds}, {plan.cfg.federation.rounds} rounds, federated ε "
            + ", ".join(eps_text(e) for e in plan.federated_epsilons)
        )
        for name, scorer in BASELINES.items():
            if not self._reuse(name):
                self._baseline(name, scorer)
        if not self._reuse("zero_shot"):
            self._zero_shot()
        else:
            self._reuse_twins("zero_shot", None, None)
        zero = next(r for r in self.runs if r["method"] == "zero_shot")
        self.round_zero = zero["rounds"][0]["validation_ndcg@10"]
        for seed in plan.seeds:
            for method, eps, trained in self._seed_plan():
                if not self._reuse(run_key(method, seed, eps), self._units(trained)):
                    self._train_method(method, seed, eps)
                else:
                    self._reuse_twins(method, seed, eps)

    def _reuse(self, key: str, units: int = 0) -> bool:
        """Keep a run a resumed comparison already finished (same settings, checked on load)."""
        if key not in self.previous:
            return False
        self.runs.append(self.previous[key])
        self.units_total -= units
        self.log(f"{key}: kept from the earlier results.json")
        return True

    def _reuse_twins(self, method: str, seed: int | None, eps: float | None) -> None:
        """The runs a kept run made alongside it: its personalised and "+ local" variants."""
        twins = [method + HYBRID_SUFFIX]
        if method == "federated_dp":
            twins += ["federated_dp_personalized", "federated_dp_personalized" + HYBRID_SUFFIX]
        for twin in twins:
            self._reuse(run_key(twin, seed, eps))

    def _recommender(self, seed: int) -> tuple[Recommender, OrderedDict]:
        """The seed's recommender and its initial adapter, built once per seed."""
        if self._seed_model is None or self._seed_model[0] != seed:
            self.log(f"seed {seed}: building the recommender")
            rec = self.make_rec(seed)
            self._seed_model = (seed, rec, get_adapter_arrays(rec))
        return self._seed_model[1], self._seed_model[2]

    def _baseline(self, name: str, scorer: Scorer) -> None:
        start = time.perf_counter()
        test, ranks = {}, {}
        for data in self.platforms:
            ranks[data.name] = baseline_ranks(scorer, data, "test")
            test[data.name] = slice_metrics(ranks[data.name], self.slices[data.name])
        self._record(self._run_record(name, None, None, start, test, ranks, rounds=[]))

    def _zero_shot(self) -> None:
        """The pretrained encoder: a fresh adapter is the identity (LoRA B = 0)."""
        start = time.perf_counter()
        rec, initial = self._recommender(self.plan.seeds[0])
        set_adapter_arrays(rec, initial)
        self._vectors = {}
        round_zero = {p.name: self._validation_ndcg(rec, p) for p in self.platforms}
        tested = self._test(rec, self.platforms, "zero_shot")
        rounds = [{"round": 0, "validation_ndcg@10": round_zero}]  # every curve starts here
        self._record_tested("zero_shot", None, None, start, tested, rounds)

    def _train_method(self, method: str, seed: int, eps: float) -> None:
        start = time.perf_counter()
        key = run_key(method, seed, eps)
        rec, initial = self._recommender(seed)
        cfg = self.plan.config_for(seed, eps, method)
        everyone = self.platforms
        names = [p.name for p in everyone]
        personal: dict[str, Arrays] = {}
        if method == "local_only":
            # Each platform alone, with every step the product takes (personalisation included).
            tested, per_platform = Tested(), []
            for data in everyone:
                self.log(f"{key}: {data.name} trains alone, ε {eps_text(eps)}")
                rounds, own = self._train(rec, initial, [data], cfg, [data], f"{key} {data.name}")
                per_platform.append(rounds)
                if data.name in own:
                    set_adapter_arrays(rec, own[data.name])
                    self._vectors = {}
                tested.update(self._test(rec, [data], method))
            rounds = merge_rounds(per_platform)
        elif method == "centralized":
            pooled = pool_platforms(everyone)
            self.log(
                f"{key}: one model on the pooled data ({pooled.num_users} users, "
                f"{len(pooled.items)} items), no DP"
            )
            rounds, _ = self._train(rec, initial, [pooled], cfg, everyone, key)
            tested = self._test(rec, everyone, method)
        elif method == "federated_unseen":
            held_out = self.by_name[str(self.plan.unseen)]
            others = [p for p in everyone if p is not held_out]
            names = [p.name for p in others]
            self.log(
                f"{key}: federating {', '.join(names)} without {held_out.name}, ε {eps_text(eps)}"
            )
            rounds, _ = self._train(rec, initial, others, cfg, [held_out], key)
            tested = self._test(rec, [held_out], method)
        elif method == "federated_eps":  # the product's final ranking at another ε
            self.log(f"{key}: federating {len(everyone)} platforms, ε {eps_text(eps)}")
            rounds, own = self._train(rec, initial, everyone, cfg, everyone, key)
            tested = self._test_personal(rec, own, method)
        else:  # federated_dp (+ personalised), federated_dp_head_only, federated_no_dp
            self.log(f"{key}: federating {len(everyone)} platforms, ε {eps_text(eps)}")
            rounds, personal = self._train(rec, initial, everyone, cfg, everyone, key)
            tested = self._test(rec, everyone, method)
        self._record_tested(method, seed, eps, start, tested, rounds, names)
        if method == "federated_dp" and personal:
            self._record_personalized(rec, personal, seed, eps, start, rounds, names)

    def _record_personalized(
        self,
        rec: Recommender,
        personal: dict[str, Arrays],
        seed: int,
        eps: float,
        start: float,
        rounds: list[dict[str, Any]],
        names: list[str],
    ) -> None:
        """The same federation's final ranking at each site: its personal fine-tune."""
        method = "federated_dp_personalized"
        tested = self._test_personal(rec, personal, method)
        self._record_tested(method, seed, eps, start, tested, rounds, names)

    def _test_personal(self, rec: Recommender, personal: dict[str, Arrays], method: str) -> Tested:
        """Each platform tested with its own personal adapter (the global one where it has
        none); ``rec`` keeps the global adapter."""
        global_arrays = get_adapter_arrays(rec)
        tested = Tested()
        for data in self.platforms:
            set_adapter_arrays(rec, personal.get(data.name, global_arrays))
            self._vectors = {}
            tested.update(self._test(rec, [data], method))
        set_adapter_arrays(rec, global_arrays)
        self._vectors = {}
        return tested

    def _record_tested(
        self,
        method: str,
        seed: int | None,
        eps: float | None,
        start: float,
        tested: Tested,
        rounds: list[dict[str, Any]],
        names: list[str] | None = None,
    ) -> None:
        """The model's run and, when it has one, its "+ local" twin (the site's final ranking)."""
        record = self._run_record(
            method, seed, eps, start, tested.test, tested.ranks, rounds, names
        )
        self._record(record)
        if tested.fusion:
            hybrid = self._run_record(
                method + HYBRID_SUFFIX,
                seed,
                eps,
                start,
                tested.hybrid_test,
                tested.hybrid_ranks,
                rounds,
                names,
            )
            self._record({**hybrid, "fusion": tested.fusion})

    def _train(
        self,
        rec: Recommender,
        initial: OrderedDict,
        train_on: list[PlatformData],
        cfg: FedxrecConfig,
        curve_on: list[PlatformData],
        key: str,
    ) -> tuple[list[dict[str, Any]], dict[str, Arrays]]:
        """Federate from the seed's initial adapter; returns the per-round record and each
        platform's personal adapter (when the configuration personalises)."""
        set_adapter_arrays(rec, initial)
        self._vectors = {}
        rounds = [
            {
                "round": 0,
                "validation_ndcg@10": {p.name: self.round_zero[p.name] for p in curve_on},
                "epsilon": {p.name: 0.0 for p in train_on},
            }
        ]
        total = cfg.federation.rounds

        def on_round(server_round: int, metrics: dict[str, dict[str, float]]) -> None:
            self._vectors = {}  # a new global adapter
            ndcg = {p.name: self._validation_ndcg(rec, p) for p in curve_on}
            rounds.append(
                {
                    "round": server_round,
                    "validation_ndcg@10": ndcg,
                    **{
                        field: {n: m[field] for n, m in metrics.items()}
                        for field in ("epsilon", "noise_multiplier", "delta", "loss")
                    },
                }
            )
            eps = ", ".join(f"{n} {spent_text(m['epsilon'])}" for n, m in metrics.items())
            val = ", ".join(f"{n} {v:.4f}" for n, v in ndcg.items())
            self.log(f"{key}: round {server_round}/{total}: validation NDCG@10 {val}; ε {eps}")

        # The same run id for every method of a seed: the same users are sampled in the same
        # order wherever the methods overlap, so their differences are less noisy.
        _, personal = federate(
            rec,
            train_on,
            cfg,
            run_id=f"compare-seed{cfg.train.seed}",
            on_round=on_round,
            log=self.log,
        )
        self.units_done += self._units(train_on)
        self._vectors = {}
        return rounds, personal

    def _run_record(
        self,
        method: str,
        seed: int | None,
        epsilon: float | None,
        start: float,
        test: dict[str, Any],
        ranks: dict[str, list[int]],
        rounds: list[dict[str, Any]],
        trained_on: list[str] | None = None,
    ) -> dict[str, Any]:
        return {
            "key": run_key(method, seed, epsilon),
            "method": method,
            "seed": seed,
            "epsilon": epsilon,  # None: no training; inf: trained without DP
            "trained_on": trained_on or [],
            "seconds": time.perf_counter() - start,
            "test": test,
            "ranks": ranks,
            "rounds": rounds,
        }
