"""Running a comparison: every method of every seed, on the same platforms and split.

Every training method is a federation of the product's own coordinator and sites
(simulations/compare/federations.py); the comparison only chooses which sites take part, with
which settings, and measures the adapters they leave (simulations/compare/evaluation.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from clients.federation.site_tasks import describe_catalogue
from clients.federation.training import trainable_users
from shared.adapter import initial_adapter
from shared.config import FedxrecConfig
from shared.data import PlatformData
from shared.whitening import whitening_arrays
from simulations.baselines import BASELINES, Scorer, baseline_ranks
from simulations.compare.data import (
    apart_metrics,
    counted_before,
    pool_platforms,
    slice_metrics,
)
from simulations.compare.evaluation import Evaluator
from simulations.compare.federations import Trained, train
from simulations.compare.plan import (
    HYBRID_METHODS,
    ComparePlan,
    eps_text,
    run_key,
    seed_plan,
    unseen_runs,
)
from simulations.compare.records import Method, RoundRecord, RunRecord
from simulations.compare.tested import Tested, merge_rounds
from simulations.inprocess import write_platform_data
from simulations.report import code_commit

Log = Callable[[str], None]
Arrays = dict[str, np.ndarray]
M = Method


class Experiment:
    """Runs a ComparePlan on loaded platforms; ``runs`` become results.json's runs.

    ``folders`` holds each platform's data folder (the sites read their data from there) and
    ``work`` is where the federations run (temporary folders, removed after each run).
    """

    def __init__(
        self,
        plan: ComparePlan,
        platforms: list[PlatformData],
        folders: dict[str, Path],
        work: Path,
        *,
        log: Log = print,
        on_run: Callable[[Experiment], None] | None = None,
        command: str = "",
        previous_runs: list[RunRecord] | None = None,
    ) -> None:
        if len({p.name for p in platforms}) != len(platforms):
            raise ValueError("two platforms have the same name")
        self.plan, self.platforms, self.folders, self.work = plan, platforms, folders, work
        self.by_name = {p.name: p for p in platforms}
        if plan.unseen is not None and plan.unseen not in self.by_name:
            raise ValueError(
                f"--unseen {plan.unseen}: no such platform (have {', '.join(self.by_name)})"
            )
        self.log_line, self.on_run, self.command = log, on_run, command
        self.evaluator = Evaluator(plan.cfg, platforms, plan.curve_users)
        self.device = str(self.evaluator.device)
        self.runs: list[RunRecord] = []
        self.started = time.perf_counter()
        self.commit = code_commit()
        self.round_zero: dict[str, float] = {}
        self.units_total = self._units_planned()
        self.units_done = 0
        self.previous = {r.key: r for r in previous_runs or []}

    @property
    def slices(self) -> dict[str, dict[str, list[int]]]:
        return self.evaluator.slices

    @property
    def curve_users(self) -> dict[str, list[int]]:
        return self.evaluator.curve_users

    # -- progress --------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        minutes = (time.perf_counter() - self.started) / 60
        self.log_line(f"[compare {minutes:5.1f} min] {message}")

    def _units(self, trained: Iterable[PlatformData]) -> int:
        """Training work of a run: rounds × users trained (what the ETA is estimated from)."""
        return self.plan.cfg.federation.rounds * sum(len(trainable_users(p)) for p in trained)

    def _units_planned(self) -> int:
        per_seed = sum(
            self._units(trained) for _, _, trained in seed_plan(self.plan, self.platforms)
        )
        return per_seed * len(self.plan.seeds)

    def _eta(self) -> str:
        if not self.units_done:
            return ""
        elapsed = time.perf_counter() - self.started
        left = elapsed / self.units_done * (self.units_total - self.units_done)
        return f"; about {left / 60:.0f} min left"

    def unseen_runs(self) -> bool:
        return unseen_runs(self.plan, self.platforms)

    def _record(self, run: RunRecord) -> None:
        self.runs.append(run)
        summary = "  ".join(
            f"{p} {m['all']['ndcg@10']:.4f}" for p, m in run.test.items() if m["all"]["users"]
        )
        self.log(f"{run.key}: test NDCG@10 {summary} ({run.seconds:.0f} s){self._eta()}")
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
                self._baseline(Method(name), scorer)
        if not self._reuse(M.ZERO_SHOT):
            self._zero_shot()
        else:
            self._reuse_twins(M.ZERO_SHOT, None, None)
        zero = next(r for r in self.runs if r.method == M.ZERO_SHOT)
        self.round_zero = zero.rounds[0].validation_ndcg
        for seed in plan.seeds:
            for method, eps, trained in seed_plan(plan, self.platforms):
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

    def _reuse_twins(self, method: Method, seed: int | None, eps: float | None) -> None:
        """The runs a kept run made alongside it: its personalised and "+ local" variants."""
        twins = [method.with_local] if method in HYBRID_METHODS else []
        if method == M.FEDERATED_DP:
            twins += [M.FEDERATED_DP_PERSONALIZED, M.FEDERATED_DP_PERSONALIZED_LOCAL]
        for twin in twins:
            self._reuse(run_key(twin, seed, eps))

    def _baseline(self, name: Method, scorer: Scorer) -> None:
        start = time.perf_counter()
        test, ranks = {}, {}
        for data in self.platforms:
            ranks[data.name] = baseline_ranks(scorer, data, "test")
            test[data.name] = slice_metrics(ranks[data.name], self.slices[data.name])
            # the new-item slice: the statistics as they stood on the cut-off day
            cutoff = self.evaluator.cutoffs[data.name]
            if cutoff is not None:
                apart = baseline_ranks(
                    scorer,
                    data,
                    "test",
                    self.slices[data.name]["new_items"],
                    counted_before(data, cutoff),
                )
                test[data.name].update(apart_metrics({"new_items": apart}))
        self._record(self._run_record(name, None, None, start, test, ranks, rounds=[]))

    def _zero_shot(self) -> None:
        """The untrained model: the pretrained encoder (LoRA B = 0), a fresh head with each
        platform's own catalogue whitening (what a site alone starts from)."""
        start = time.perf_counter()
        cfg, round_zero, tested = self.plan.cfg, {}, Tested()
        for data in self.platforms:
            whitening = whitening_arrays(describe_catalogue(cfg, data))
            initial = initial_adapter(cfg.model, self.plan.seeds[0], whitening)
            round_zero[data.name] = self.evaluator.validation_ndcg(initial, data)
            tested.update(self.evaluator.test(initial, [data], hybrid=True))
        rounds = [RoundRecord(0, validation_ndcg=round_zero)]  # every curve starts here
        self._record_tested(M.ZERO_SHOT, None, None, start, tested, rounds)

    def _train_method(self, method: Method, seed: int, eps: float) -> None:
        start = time.perf_counter()
        key = run_key(method, seed, eps)
        cfg = self.plan.config_for(seed, eps, method)
        everyone = self.platforms
        names = [p.name for p in everyone]
        hybrid = method in HYBRID_METHODS
        if method == M.LOCAL_ONLY:
            # Each platform alone, with every step the product takes (personalisation included).
            tested, per_platform = Tested(), []
            for data in everyone:
                self.log(f"{key}: {data.name} trains alone, ε {eps_text(eps)}")
                alone = self._train(f"{key} {data.name}", cfg, [data], [data], seed)
                per_platform.append(alone.rounds)
                own = alone.personal.get(data.name, alone.global_adapter)
                tested.update(self.evaluator.test(own, [data], hybrid))
            rounds = merge_rounds(per_platform)
        elif method == M.CENTRALIZED:
            pooled = pool_platforms(everyone)
            self.log(
                f"{key}: one model on the pooled data ({pooled.num_users} users, "
                f"{len(pooled.items)} items), no DP"
            )
            folder = self.work / "pooled" / pooled.name
            if not folder.is_dir():
                write_platform_data(pooled, folder)
            trained = self._train(key, cfg, [pooled], everyone, seed, {pooled.name: folder})
            rounds = trained.rounds
            tested = self.evaluator.test(trained.global_adapter, everyone, hybrid)
        elif method == M.FEDERATED_UNSEEN:
            held_out = self.by_name[str(self.plan.unseen)]
            others = [p for p in everyone if p is not held_out]
            names = [p.name for p in others]
            self.log(
                f"{key}: federating {', '.join(names)} without {held_out.name}, ε {eps_text(eps)}"
            )
            trained = self._train(key, cfg, others, [held_out], seed)
            rounds = trained.rounds
            tested = self.evaluator.test(trained.global_adapter, [held_out], hybrid)
        else:  # federated_dp (+ personalised), federated_dp_head_only, federated_no_dp, _eps
            self.log(f"{key}: federating {len(everyone)} platforms, ε {eps_text(eps)}")
            trained = self._train(key, cfg, everyone, everyone, seed)
            rounds = trained.rounds
            if method == M.FEDERATED_EPS:  # the product's final ranking at another ε
                tested = self.evaluator.test_each(self._own(trained), everyone, hybrid)
            else:
                tested = self.evaluator.test(trained.global_adapter, everyone, hybrid)
        self._record_tested(method, seed, eps, start, tested, rounds, names)
        if method == M.FEDERATED_DP and trained.personal:
            # the same federation's final ranking at each site: its personal fine-tune
            personal = self.evaluator.test_each(self._own(trained), everyone, hybrid=True)
            self._record_tested(
                M.FEDERATED_DP_PERSONALIZED, seed, eps, start, personal, rounds, names
            )

    def _own(self, trained: Trained) -> dict[str, Arrays]:
        """Each platform's own model: its personal one, or the global one where it has none."""
        return {
            p.name: trained.personal.get(p.name, trained.global_adapter) for p in self.platforms
        }

    def _train(
        self,
        key: str,
        cfg: FedxrecConfig,
        train_on: list[PlatformData],
        curve_on: list[PlatformData],
        seed: int,
        sites: dict[str, Path] | None = None,
    ) -> Trained:
        """A federation of ``train_on`` (their data folders, or ``sites``) from the seed's
        initial adapter, its validation curve on ``curve_on``."""
        trained = train(
            sites or {p.name: self.folders[p.name] for p in train_on},
            cfg,
            curve_on=curve_on,
            evaluator=self.evaluator,
            round_zero=self.round_zero,
            work=self.work,
            # The same run for every method of a seed: the same users are sampled in the same
            # order wherever the methods overlap, so their differences are less noisy.
            run_id=seed + 1,
            log=lambda line: self.log(f"{key}: {line}"),
            # a non-private reference stops early at its best validation round (its best length
            # differs by data set; a DP run spends its ε whatever the length, so it keeps all)
            best_round=not cfg.privacy.enabled,
        )
        self.units_done += self._units(train_on)
        return trained

    def _record_tested(
        self,
        method: Method,
        seed: int | None,
        eps: float | None,
        start: float,
        tested: Tested,
        rounds: list[RoundRecord],
        names: list[str] | None = None,
    ) -> None:
        """The model's run and, when it has one, its "+ local" twin (the site's final ranking)."""
        record = self._run_record(
            method, seed, eps, start, tested.test, tested.ranks, rounds, names
        )
        self._record(record)
        if tested.fusion:
            hybrid = self._run_record(
                method.with_local,
                seed,
                eps,
                start,
                tested.hybrid_test,
                tested.hybrid_ranks,
                rounds,
                names,
            )
            hybrid.fusion = tested.fusion
            self._record(hybrid)

    def _run_record(
        self,
        method: Method,
        seed: int | None,
        epsilon: float | None,
        start: float,
        test: dict[str, Any],
        ranks: dict[str, list[int]],
        rounds: list[RoundRecord],
        trained_on: list[str] | None = None,
    ) -> RunRecord:
        return RunRecord(
            key=run_key(method, seed, epsilon),
            method=method,
            seed=seed,
            epsilon=epsilon,
            trained_on=trained_on or [],
            seconds=time.perf_counter() - start,
            test=test,
            ranks=ranks,
            rounds=rounds,
        )
