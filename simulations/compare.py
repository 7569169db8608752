"""`fedxrec compare`: the federated private recommender against what a platform would pick instead.

On the same platforms and the same chronological leave-last-out split (DESIGN.md protocol: full
ranking of each platform's catalogue, history excluded), for each seed:

  popularity        per platform, counts of training interactions
  itemknn           per platform, item–item co-occurrence cosine
  zero_shot         the pretrained encoder, no fine-tuning
  local_only        each platform trains its own adapter alone, same DP budget as the product
  federated_dp      the product: FedAvg of DP adapters at privacy.epsilon (default 8)
  federated_no_dp   the same federation without DP
  centralized       no DP, every platform's data pooled in one place (a reference no one may run)
  federated_unseen  DP federation without one platform, ranked on that platform it never saw

plus the federation at every ε of --epsilons (privacy–utility), with the noise each needed.

Writes to --out: ``results.json`` (every figure, per run and summarised, with the data set, split,
seeds, ε and δ), ``report.md`` (tables, targets met or missed, plots), ``plots/*.png`` and
``platforms/`` (the exact platform data every method was run on). ``results.json`` is also written
after every run, so a stopped comparison keeps what it finished, and ``--resume`` carries on from
there (adding seeds or ε works the same way).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform as host
import shutil
import statistics
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clients.dataset import PlatformData, load_platform
from clients.evaluation import split_ranks
from clients.training import trainable_users
from server.run_log import SPLIT
from shared.adapter import get_adapter_arrays, set_adapter_arrays
from shared.config import ConfigError, FedxrecConfig, add_config_arguments, parse_overrides
from shared.metrics import METRIC_NAMES, ranking_metrics
from shared.model import Recommender, build_recommender, pick_device
from simulations.baselines import BASELINES, Scorer, baseline_ranks
from simulations.inprocess import federate
from simulations.partition import prepare_platforms
from simulations.plots import plot_methods, plot_privacy_utility, plot_rounds
from simulations.report import _commit, format_table

SCHEMA_VERSION = 1
COLD_USER_MAX_INTERACTIONS = 5  # a user with at most this many interactions on the platform
COLD_ITEM_MAX_TRAINING = 5  # a test item with at most this many training interactions
DEFAULT_SEEDS = 3
DEFAULT_EPSILONS = "1,2,4,8,inf"
# --quick: a subset that runs every method in well under 15 minutes on 2 CPU cores
QUICK_OVERRIDES: dict[str, Any] = {
    "data.max_users": 60,
    "federation.rounds": 2,
    "federation.eval_users": 30,
}
QUICK_EPSILONS = "8,inf"
SLICES = ("all", "cold_users", "cold_items")
OUTPUTS = ("platforms", "plots", "results.json", "report.md")
TARGET_RATIO = 0.9


@dataclass(frozen=True)
class Method:
    label: str
    trained_on: str
    privacy: str


# Summary order; "federated_eps" holds the other ε of the privacy–utility sweep.
METHODS: OrderedDict[str, Method] = OrderedDict(
    [
        ("popularity", Method("Popularity", "own platform", "none (counts)")),
        ("itemknn", Method("ItemKNN", "own platform", "none (co-occurrence)")),
        ("zero_shot", Method("Zero-shot encoder", "nothing", "nothing learned")),
        ("local_only", Method("Local-only (DP)", "own platform alone", "DP ε={eps}")),
        ("federated_dp", Method("Federated (DP)", "all platforms, adapters only", "DP ε={eps}")),
        ("federated_no_dp", Method("Federated (no DP)", "all platforms, adapters only", "none")),
        ("centralized", Method("Centralized (no DP)", "all platforms pooled", "none")),
        (
            "federated_unseen",
            Method("Federated without it (DP)", "the other platforms", "DP ε={eps}"),
        ),
        ("federated_eps", Method("Federated (DP, ε sweep)", "all platforms", "DP")),
    ]
)
CURVE_METHODS = ("federated_dp", "federated_no_dp", "local_only", "centralized", "federated_unseen")

Log = Callable[[str], None]
RecFactory = Callable[[int], Recommender]


# ---- the plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComparePlan:
    cfg: FedxrecConfig  # privacy.epsilon is the product's ε; every method sets privacy.enabled
    seeds: list[int]
    epsilons: list[float]  # the privacy–utility sweep; inf = no DP
    unseen: str | None  # platform left out of the "unseen platform" federation (None: no such run)
    quick: bool = False

    @property
    def curve_users(self) -> int:
        """Validation users per platform in each round's curve (0 = all), as in `simulate`."""
        return self.cfg.federation.eval_users

    @property
    def product_epsilon(self) -> float:
        return self.cfg.privacy.epsilon

    @property
    def federated_epsilons(self) -> list[float]:
        """Every ε the federation runs at: the sweep, the product's, and ∞ (no DP)."""
        eps = set(self.epsilons) | {self.product_epsilon, math.inf}
        return sorted(eps)

    def config_for(self, seed: int, epsilon: float) -> FedxrecConfig:
        dp = math.isfinite(epsilon)
        return self.cfg.with_overrides(
            {
                "train.seed": seed,
                "federation.seed": seed,
                "privacy.enabled": dp,
                "privacy.epsilon": epsilon if dp else self.product_epsilon,
            }
        )


def parse_epsilons(text: str) -> list[float]:
    """'1,2,4,8,inf' → [1.0, 2.0, 4.0, 8.0, inf]; each ε > 0, 'inf' means no DP."""
    values = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise ValueError(
                f"--epsilons: '{part}' is not a number; give comma-separated ε values, e.g. "
                "1,2,4,8,inf (inf = no DP)"
            ) from None
        if math.isnan(value) or value <= 0:
            raise ValueError(f"--epsilons: every ε must be > 0 (or inf for no DP), got {part}")
        values.append(value)
    if not values:
        raise ValueError("--epsilons names no ε; e.g. --epsilons 1,2,4,8,inf")
    return sorted(set(values))


def _eps_text(eps: float) -> str:
    return f"{eps:g}" if math.isfinite(eps) else "∞"


def _spent_text(eps: float) -> str:
    return f"{eps:.2f}" if math.isfinite(eps) else "∞"


# ---- data: platforms, slices, pooled data -------------------------------------------------------


def load_platforms(cfg: FedxrecConfig, root: Path) -> list[PlatformData]:
    names = prepare_platforms(cfg.data, root)
    return [
        load_platform(root / n, n, min_user_interactions=cfg.data.min_user_interactions)
        for n in names
    ]


def platform_slices(data: PlatformData) -> dict[str, list[int]]:
    """Users of each evaluation slice (test split).

    cold_users: at most 5 interactions on this platform, all splits counted.
    cold_items: the test item has at most 5 interactions in the training sequences of all users.
    """
    counts = data.train_item_counts()
    return {
        "all": list(range(data.num_users)),
        "cold_users": [
            u for u in range(data.num_users) if len(data.sequences[u]) <= COLD_USER_MAX_INTERACTIONS
        ],
        "cold_items": [
            u
            for u in range(data.num_users)
            if counts[data.split(u, "test")[1]] <= COLD_ITEM_MAX_TRAINING
        ],
    }


def pool_platforms(platforms: list[PlatformData], name: str = "pooled") -> PlatformData:
    """All platforms' users and catalogues in one place (the centralized reference).

    IDs are prefixed with the platform so that two platforms' "u1" stay two users.
    """
    items, users, sequences = [], [], []
    for data in platforms:
        offset = len(items)
        items += [dataclasses.replace(i, item_id=f"{data.name}/{i.item_id}") for i in data.items]
        users += [f"{data.name}/{u}" for u in data.users]
        sequences += [[offset + i for i in seq] for seq in data.sequences]
    return PlatformData(name=name, items=items, users=users, sequences=sequences)


def slice_metrics(ranks: list[int], slices: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    """Metrics of each slice; a slice with no user has only ``users: 0``."""
    out = {}
    for name, users in slices.items():
        part = [ranks[u] for u in users]
        out[name] = {**(ranking_metrics(part) if part else {}), "users": len(part)}
    return out


# ---- running it ---------------------------------------------------------------------------------


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
        self.round_zero: dict[str, float] = {}
        self.units_total = self._units_planned()
        self.units_done = 0
        self.previous = {r["key"]: r for r in previous_runs or []}
        self._seed_model: tuple[int, Recommender, OrderedDict] | None = None
        self._vectors: dict[str, torch.Tensor] = {}

    # -- progress --------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        minutes = (time.perf_counter() - self.started) / 60
        self.log_line(f"[compare {minutes:5.1f} min] {message}")

    def _units(self, trained: Iterable[PlatformData]) -> int:
        """Training work of a run: rounds × users trained (what the ETA is estimated from)."""
        return self.plan.cfg.federation.rounds * sum(len(trainable_users(p)) for p in trained)

    def _units_planned(self) -> int:
        per_seed = self._units(self.platforms) * (2 + len(self.plan.federated_epsilons))
        if self._unseen_runs():
            per_seed += self._units(p for p in self.platforms if p.name != self.plan.unseen)
        return per_seed * len(self.plan.seeds)

    def _eta(self) -> str:
        if not self.units_done:
            return ""
        elapsed = time.perf_counter() - self.started
        left = elapsed / self.units_done * (self.units_total - self.units_done)
        return f"; about {left / 60:.0f} min left"

    def _unseen_runs(self) -> bool:
        return self.plan.unseen is not None and len(self.platforms) >= 2

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

    def _test(
        self, rec: Recommender, platforms: list[PlatformData]
    ) -> tuple[dict[str, Any], dict[str, list[int]]]:
        metrics, ranks = {}, {}
        for data in platforms:
            ranks[data.name] = split_ranks(rec, data, "test", None, self._item_vectors(rec, data))
            metrics[data.name] = slice_metrics(ranks[data.name], self.slices[data.name])
        return metrics, ranks

    def _record(self, run: dict[str, Any]) -> None:
        self.runs.append(run)
        summary = "  ".join(
            f"{p} {m['all']['ndcg@10']:.4f}" for p, m in run["test"].items() if m["all"]["users"]
        )
        self.log(f"{run['key']}: test NDCG@10 {summary} ({run['seconds']:.0f} s){self._eta()}")
        if self.on_run:
            self.on_run(self)

    # -- methods ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        plan = self.plan
        self.log(
            f"{len(self.platforms)} platforms ("
            + ", ".join(
                f"{p.name}: {p.num_users} users, {len(p.items)} items" for p in self.platforms
            )
            + f"), seeds {plan.seeds}, {plan.cfg.federation.rounds} rounds, federated ε "
            + ", ".join(_eps_text(e) for e in plan.federated_epsilons)
        )
        for name, scorer in BASELINES.items():
            if not self._reuse(name):
                self._baseline(name, scorer)
        if not self._reuse("zero_shot"):
            self._zero_shot()
        zero = next(r for r in self.runs if r["method"] == "zero_shot")
        self.round_zero = zero["rounds"][0]["validation_ndcg@10"]
        for seed in plan.seeds:
            for method, eps, trained in self._seed_plan():
                if not self._reuse(run_key(method, seed, eps), self._units(trained)):
                    self._train_method(method, seed, eps)
        return self.results()

    def _seed_plan(self) -> list[tuple[str, float, list[PlatformData]]]:
        """(method, ε, platforms trained) of every training run of one seed, in running order."""
        product, everyone = self.plan.product_epsilon, self.platforms
        plan = [
            ("federated_dp", product, everyone),
            ("local_only", product, everyone),
            ("federated_no_dp", math.inf, everyone),
            ("centralized", math.inf, everyone),
        ]
        if self._unseen_runs():
            others = [p for p in everyone if p.name != self.plan.unseen]
            plan.append(("federated_unseen", product, others))
        plan += [
            ("federated_eps", eps, everyone)
            for eps in self.plan.federated_epsilons
            if eps != product and math.isfinite(eps)
        ]
        return plan

    def _reuse(self, key: str, units: int = 0) -> bool:
        """Keep a run a resumed comparison already finished (same settings, checked on load)."""
        if key not in self.previous:
            return False
        self.runs.append(self.previous[key])
        self.units_total -= units
        self.log(f"{key}: kept from the earlier results.json")
        return True

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
        test, ranks = self._test(rec, self.platforms)
        rounds = [{"round": 0, "validation_ndcg@10": round_zero}]  # every curve starts here
        self._record(self._run_record("zero_shot", None, None, start, test, ranks, rounds))

    def _train_method(self, method: str, seed: int, eps: float) -> None:
        start = time.perf_counter()
        key = run_key(method, seed, eps)
        rec, initial = self._recommender(seed)
        cfg = self.plan.config_for(seed, eps)
        everyone = self.platforms
        names = [p.name for p in everyone]
        if method == "local_only":
            test, ranks, per_platform = {}, {}, []
            for data in everyone:
                self.log(f"{key}: {data.name} trains alone, ε {_eps_text(eps)}")
                per_platform.append(
                    self._train(rec, initial, [data], cfg, [data], f"{key} {data.name}")
                )
                t, r = self._test(rec, [data])
                test.update(t)
                ranks.update(r)
            rounds = merge_rounds(per_platform)
        elif method == "centralized":
            pooled = pool_platforms(everyone)
            self.log(
                f"{key}: one model on the pooled data ({pooled.num_users} users, "
                f"{len(pooled.items)} items), no DP"
            )
            rounds = self._train(rec, initial, [pooled], cfg, everyone, key)
            test, ranks = self._test(rec, everyone)
        elif method == "federated_unseen":
            held_out = self.by_name[str(self.plan.unseen)]
            others = [p for p in everyone if p is not held_out]
            names = [p.name for p in others]
            self.log(
                f"{key}: federating {', '.join(names)} without {held_out.name}, ε {_eps_text(eps)}"
            )
            rounds = self._train(rec, initial, others, cfg, [held_out], key)
            test, ranks = self._test(rec, [held_out])
        else:  # federated_dp, federated_no_dp, federated_eps
            self.log(f"{key}: federating {len(everyone)} platforms, ε {_eps_text(eps)}")
            rounds = self._train(rec, initial, everyone, cfg, everyone, key)
            test, ranks = self._test(rec, everyone)
        self._record(self._run_record(method, seed, eps, start, test, ranks, rounds, names))

    def _train(
        self,
        rec: Recommender,
        initial: OrderedDict,
        train_on: list[PlatformData],
        cfg: FedxrecConfig,
        curve_on: list[PlatformData],
        key: str,
    ) -> list[dict[str, Any]]:
        """Federate from the seed's initial adapter; returns the per-round record."""
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
            eps = ", ".join(f"{n} {_spent_text(m['epsilon'])}" for n, m in metrics.items())
            val = ", ".join(f"{n} {v:.4f}" for n, v in ndcg.items())
            self.log(f"{key}: round {server_round}/{total}: validation NDCG@10 {val}; ε {eps}")

        # The same run id for every method of a seed: the same users are sampled in the same
        # order wherever the methods overlap, so their differences are less noisy.
        federate(
            rec,
            train_on,
            cfg,
            run_id=f"compare-seed{cfg.train.seed}",
            on_round=on_round,
            log=self.log,
        )
        self.units_done += self._units(train_on)
        return rounds

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

    # -- results ---------------------------------------------------------------------------------
    def results(self, *, complete: bool = True) -> dict[str, Any]:
        return build_results(self, complete=complete)


def run_key(method: str, seed: int | None, epsilon: float | None) -> str:
    """A run's name in results.json and in the progress lines, e.g. 'federated_dp/seed0'."""
    if seed is None:
        return method
    if method == "federated_eps":
        return f"federated_eps{_eps_text(epsilon if epsilon is not None else math.inf)}/seed{seed}"
    return f"{method}/seed{seed}"


def merge_rounds(per_platform: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per-round records of several single-platform runs as one record per round."""
    merged: dict[int, dict[str, Any]] = {}
    for rounds in per_platform:
        for entry in rounds:
            target = merged.setdefault(entry["round"], {"round": entry["round"]})
            for field, value in entry.items():
                if isinstance(value, dict):
                    target.setdefault(field, {}).update(value)
    return [merged[r] for r in sorted(merged)]


# ---- summarising --------------------------------------------------------------------------------


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation over seeds (0 for a single value)."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def _platform_mean(test: dict[str, Any], slice_name: str, metric: str) -> float | None:
    values = [m[slice_name][metric] for m in test.values() if m[slice_name]["users"]]
    return statistics.fmean(values) if values else None


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per platform and platform mean, per slice and metric: mean ± std over seeds."""
    out: dict[str, Any] = {}
    for run in runs:
        out.setdefault(run["method"], []).append(run)
    summary = {}
    for method, method_runs in out.items():
        platforms: dict[str, Any] = {}
        names = list(dict.fromkeys(p for r in method_runs for p in r["test"]))
        for name in names:
            platforms[name] = {}
            for s in SLICES:
                cells = [r["test"][name][s] for r in method_runs if name in r["test"]]
                users = cells[0]["users"] if cells else 0
                platforms[name][s] = {"users": users} | (
                    {k: mean_std([c[k] for c in cells]) for k in METRIC_NAMES} if users else {}
                )
        mean = {}
        for s in SLICES:
            mean[s] = {}
            for k in METRIC_NAMES:
                values = [_platform_mean(r["test"], s, k) for r in method_runs]
                values = [v for v in values if v is not None]
                if values:
                    mean[s][k] = mean_std(values)
        summary[method] = {
            "seeds": [r["seed"] for r in method_runs],
            "epsilon": method_runs[0]["epsilon"],
            "platforms": platforms,
            "mean": mean,
        }
    return summary


def _by_epsilon(runs: list[dict[str, Any]]) -> dict[float, list[dict[str, Any]]]:
    out: dict[float, list[dict[str, Any]]] = {}
    for run in runs:
        if run["method"] in ("federated_dp", "federated_no_dp", "federated_eps"):
            out.setdefault(run["epsilon"], []).append(run)
    return dict(sorted(out.items()))


def privacy_utility(runs: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """Federated test NDCG@10 at each ε, with the noise multiplier each platform needed."""
    points = []
    for eps, eps_runs in _by_epsilon(runs).items():
        sigma = {
            n: statistics.fmean(
                r["rounds"][-1].get("noise_multiplier", {}).get(n, 0.0) for r in eps_runs
            )
            for n in names
        }
        spent = {
            n: max(r["rounds"][-1].get("epsilon", {}).get(n, 0.0) for r in eps_runs) for n in names
        }
        points.append(
            {
                "epsilon": eps,
                "noise_multiplier": sigma,
                "epsilon_spent": spent,
                "ndcg@10": {
                    n: mean_std([r["test"][n]["all"]["ndcg@10"] for r in eps_runs]) for n in names
                },
                "mean_ndcg@10": mean_std(
                    [_platform_mean(r["test"], "all", "ndcg@10") or 0.0 for r in eps_runs]
                ),
                "seeds": [r["seed"] for r in eps_runs],
            }
        )
    return points


def _stat(summary: dict[str, Any], method: str, platform: str | None, slice_name: str = "all"):
    """Mean NDCG@10 of ``method`` on ``platform`` (None = platform mean), or None if not run."""
    entry = summary.get(method)
    if entry is None:
        return None
    cell = entry["mean"] if platform is None else entry["platforms"].get(platform, {})
    value = cell.get(slice_name, {}).get("ndcg@10")
    return None if value is None else value["mean"]


def check_targets(
    summary: dict[str, Any], names: list[str], product_eps: float
) -> list[dict[str, Any]]:
    """The issue's targets for the product (federated DP), each met or missed with its numbers.

    ``met`` is None where a method it needs did not run (e.g. a single platform).
    """
    eps = _eps_text(product_eps)
    fed = "federated_dp"
    targets = []

    fed_mean, central = _stat(summary, fed, None), _stat(summary, "centralized", None)
    name = f"federated DP (ε={eps}) ≥ 90% of centralized non-private NDCG@10 (platform mean)"
    if fed_mean is None or not central:
        targets.append({"target": name, "met": None, "detail": "not computable"})
    else:
        ratio = fed_mean / central
        targets.append(
            {
                "target": name,
                "met": ratio >= TARGET_RATIO,
                "detail": f"{fed_mean:.4f} / {central:.4f} = {ratio:.1%}",
            }
        )
    for other, label in (("local_only", "local-only"), ("zero_shot", "zero-shot")):
        pairs = {n: (_stat(summary, fed, n), _stat(summary, other, n)) for n in names}
        known = {n: (a, b) for n, (a, b) in pairs.items() if a is not None and b is not None}
        targets.append(
            {
                "target": f"federated DP (ε={eps}) beats {label} on every platform (NDCG@10)",
                "met": all(a > b for a, b in known.values()) if known else None,
                "detail": "; ".join(
                    f"{n}: {a:.4f} vs {b:.4f}" + ("" if a > b else " (not beaten)")
                    for n, (a, b) in known.items()
                )
                or "not computable",
            }
        )
    a = _stat(summary, fed, None, "cold_users")
    b = _stat(summary, "itemknn", None, "cold_users")
    per = [
        f"{n}: {x:.4f} vs {y:.4f}"
        for n in names
        if (x := _stat(summary, fed, n, "cold_users")) is not None
        and (y := _stat(summary, "itemknn", n, "cold_users")) is not None
    ]
    targets.append(
        {
            "target": f"federated DP (ε={eps}) beats ItemKNN on cold users (NDCG@10, platform mean)",
            "met": None if a is None or b is None else a > b,
            "detail": "no cold user"
            if a is None or b is None
            else f"{a:.4f} vs {b:.4f} (per platform: {'; '.join(per)})",
        }
    )
    return targets


def machine_info(device: str) -> dict[str, Any]:
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "platform": host.platform(),
        "processor": host.processor() or host.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "load_average": load,
    }


def build_results(exp: Experiment, *, complete: bool) -> dict[str, Any]:
    plan, names = exp.plan, [p.name for p in exp.platforms]
    summary = summarize_runs(exp.runs)
    deltas = {}  # δ = 1/users of each platform (its ledger's), from the DP runs
    for run in exp.runs:
        if run["epsilon"] is not None and math.isfinite(run["epsilon"]):
            for entry in run["rounds"]:
                deltas.update({n: d for n, d in entry.get("delta", {}).items() if n in names})
    held_out = plan.unseen if exp._unseen_runs() else None
    unseen = None
    if held_out:
        unseen = {
            "platform": held_out,
            "trained_on": [n for n in names if n != held_out],
            "methods": {
                m: summary[m]["platforms"][held_out]["all"]
                for m in METHODS
                if m in summary and held_out in summary[m]["platforms"] and m != "federated_eps"
            },
        }
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "fedxrec compare",
        "complete": complete,
        "command": exp.command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": _commit(),
        "machine": machine_info(exp.device),
        "seconds": time.perf_counter() - exp.started,
        "dataset": plan.cfg.data.dataset,
        "split": SPLIT,
        "protocol": "full ranking of each platform's whole catalogue, the user's history excluded, "
        "ties counted against the target; test split unless said otherwise",
        "seeds": plan.seeds,
        "quick": plan.quick,
        "epsilons": plan.epsilons,
        "product_epsilon": plan.product_epsilon,
        "delta": deltas,
        "privacy": {
            "unit": "one user of one platform (all of their interactions)",
            "accountant": plan.cfg.privacy.accountant,
            "max_grad_norm": plan.cfg.privacy.max_grad_norm,
        },
        "slices": {
            "cold_users": f"users with ≤ {COLD_USER_MAX_INTERACTIONS} interactions on the platform",
            "cold_items": f"users whose test item has ≤ {COLD_ITEM_MAX_TRAINING} training "
            "interactions on the platform",
        },
        "curve_users": plan.curve_users,
        "config": plan.cfg.to_flat(),
        "methods": {k: dataclasses.asdict(m) for k, m in METHODS.items()},
        "platforms": {
            p.name: {
                "users": p.num_users,
                "items": len(p.items),
                "interactions": sum(len(s) for s in p.sequences),
                "slices": {s: exp.slices[p.name][s] for s in ("cold_users", "cold_items")},
                "curve_users": exp.curve_users[p.name],
            }
            for p in exp.platforms
        },
        "unseen_platform": unseen,
        "summary": summary,
        "privacy_utility": privacy_utility(exp.runs, names),
        "targets": check_targets(summary, names, plan.product_epsilon),
        "runs": exp.runs,
    }


def to_json(value: Any) -> Any:
    """JSON has no ∞: non-finite floats become the strings "inf", "-inf", "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {
            str(k) if not isinstance(k, float) else _json_key(k): to_json(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, np.generic):
        return to_json(value.item())
    return value


def _json_key(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:g}"


def _float(value: Any) -> Any:
    return {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}.get(value, value)


def run_from_json(run: dict[str, Any]) -> dict[str, Any]:
    """A run as read back from results.json, ∞ restored where to_json wrote "inf"."""
    run["epsilon"] = _float(run["epsilon"])
    for entry in run["rounds"]:
        if "epsilon" in entry:
            entry["epsilon"] = {n: _float(v) for n, v in entry["epsilon"].items()}
    return run


def load_previous_runs(
    path: Path, plan: ComparePlan, platforms: list[PlatformData]
) -> list[dict[str, Any]]:
    """The finished runs of an earlier comparison in the same folder, if its settings match."""
    if not path.is_file():
        return []
    try:
        saved = json.loads(path.read_text())
        config, saved_platforms, runs = saved["config"], saved["platforms"], saved["runs"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(
            f"--resume: {path} is unreadable ({err}); use another --out or drop --resume"
        ) from None
    flat = to_json(plan.cfg.to_flat())
    differ = [k for k in sorted(set(flat) | set(config)) if flat.get(k) != config.get(k)]
    shapes = {p.name: [p.num_users, len(p.items)] for p in platforms}
    if {n: [p["users"], p["items"]] for n, p in saved_platforms.items()} != shapes:
        differ.append("the platforms")
    if differ:
        raise ValueError(
            f"--resume: {path} was made with other settings ({', '.join(differ)}); its runs "
            "cannot be mixed with these: use another --out, or drop --resume to start afresh"
        )
    return [run_from_json(r) for r in runs]


def write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(to_json(payload), indent=1, ensure_ascii=False, allow_nan=False))
    os.replace(tmp, path)


# ---- the report ---------------------------------------------------------------------------------


def _cell(stat: dict[str, float] | None) -> str:
    if not stat:
        return "—"
    if stat["n"] > 1:
        return f"{stat['mean']:.4f} ± {stat['std']:.4f}"
    return f"{stat['mean']:.4f}"


def _privacy_text(method: str, results: dict[str, Any]) -> str:
    return METHODS[method].privacy.format(eps=_eps_text(results["product_epsilon"]))


def _method_rows(results: dict[str, Any], platform: str | None, slice_name: str = "all"):
    rows = [["method", "trained on", "privacy", *METRIC_NAMES]]
    for method, spec in METHODS.items():
        if method == "federated_eps" or method not in results["summary"]:
            continue
        if platform is None and method == "federated_unseen":  # one platform: its own section
            continue
        entry = results["summary"][method]
        cell = entry["mean"] if platform is None else entry["platforms"].get(platform)
        if cell is None:
            continue
        stats = cell.get(slice_name, {})
        rows.append(
            [spec.label, spec.trained_on, _privacy_text(method, results)]
            + [_cell(stats.get(k)) for k in METRIC_NAMES]
        )
    return rows


def _slice_rows(results: dict[str, Any], slice_name: str) -> list[list[str]]:
    names = list(results["platforms"])
    counts = {n: len(results["platforms"][n]["slices"][slice_name]) for n in names}
    rows = [["method", *[f"{n} ({counts[n]} users)" for n in names], "platform mean"]]
    for method, spec in METHODS.items():
        entry = results["summary"].get(method)
        if method in ("federated_eps", "federated_unseen") or entry is None:
            continue
        cells = [
            _cell(entry["platforms"].get(n, {}).get(slice_name, {}).get("ndcg@10")) for n in names
        ]
        rows.append([spec.label, *cells, _cell(entry["mean"].get(slice_name, {}).get("ndcg@10"))])
    return rows


def render_report(results: dict[str, Any], plots: dict[str, str]) -> str:
    names = list(results["platforms"])
    eps = _eps_text(results["product_epsilon"])
    machine = results["machine"]
    platforms_text = ", ".join(
        f"{n} ({p['users']} users, {p['items']} items, {p['interactions']} interactions)"
        for n, p in results["platforms"].items()
    )
    deltas = ", ".join(f"{n} {d:.1e}" for n, d in results["delta"].items()) or "—"
    cfg = results["config"]
    lines = [
        "# fedxrec comparison report" + ("" if results["complete"] else " (INCOMPLETE)"),
        "",
        f"- Data set: **{results['dataset']}**; platforms: {platforms_text}.",
        f"- Split: {results['split']}; {results['protocol']}.",
        f"- Seeds: {results['seeds']} (training and adapter initialisation; the platforms are the "
        f"same for every seed: data seed {cfg['data.seed']}). ± is the standard deviation over "
        "seeds; methods without one (popularity, ItemKNN, zero-shot) are deterministic.",
        f"- Privacy: user-level (ε, δ)-DP per platform over the whole federation; product ε = "
        f"{eps}, sweep ε ∈ {{{', '.join(_eps_text(e) for e in results['epsilons'])}}}, δ = "
        f"{deltas}, accountant {results['privacy']['accountant']}, clip "
        f"{results['privacy']['max_grad_norm']}.",
        f"- Training: {cfg['federation.rounds']} rounds of {cfg['train.steps']} steps "
        f"({cfg['train.lora_steps']} with LoRA), expected batch {cfg['train.batch_size']} users, "
        f"lr {cfg['train.learning_rate']} (LoRA {cfg['train.lora_learning_rate']}), "
        f"{cfg['train.positions']} pairs per user, sequence head over the last "
        f"{cfg['model.history_items']} items, LoRA r={cfg['model.lora_r']} on "
        f"{cfg['model.target_modules']}, encoder {cfg['model.encoder'] or 'all-MiniLM-L6-v2'}, "
        f"max users/platform {cfg['data.max_users'] or 'all'}"
        + (" (**--quick subset**)" if results["quick"] else "")
        + ".",
        f"- Run: commit {results['commit']}, {results['created']}, {results['seconds'] / 60:.1f} "
        f"min on {machine['processor']} ({machine['cpu_count']} CPUs, device {machine['device']}, "
        f"load average {machine['load_average']}).",
        f"- Command: `{results['command']}`",
        "",
        "## Methods side by side (test, mean over platforms)",
        "",
        format_table(_method_rows(results, None), markdown=True),
        "",
    ]
    if "methods" in plots:
        lines += [f"![test NDCG@10 per method and platform]({plots['methods']})", ""]
    lines += ["## Targets", ""]
    for t in results["targets"]:
        state = {True: "**met**", False: "**missed**", None: "not computable"}[t["met"]]
        lines.append(f"- {state}: {t['target']} — {t['detail']}")
    lines += ["", *observations(results), ""]
    for n in names:
        lines += [
            f"## Platform {n} (test)",
            "",
            format_table(_method_rows(results, n), markdown=True),
            "",
        ]
    lines += [
        "## Slices (test NDCG@10)",
        "",
        f"Cold users: {results['slices']['cold_users']}.",
        "",
        format_table(_slice_rows(results, "cold_users"), markdown=True),
        "",
        f"Cold items: {results['slices']['cold_items']}.",
        "",
        format_table(_slice_rows(results, "cold_items"), markdown=True),
        "",
    ]
    unseen = results["unseen_platform"]
    if unseen:
        lines += [
            f"## Unseen platform: {unseen['platform']}",
            "",
            f"The federation of {', '.join(unseen['trained_on'])} (DP, ε={eps}) never saw "
            f"{unseen['platform']}; its adapter ranks {unseen['platform']}'s catalogue from text "
            f"alone, against the untuned encoder and against {unseen['platform']}'s own "
            "local-only model (test).",
            "",
        ]
        rows = [["method", *METRIC_NAMES]]
        order = (
            "federated_unseen",
            "zero_shot",
            "local_only",
            "federated_dp",
            "popularity",
            "itemknn",
        )
        for m in order:
            stats = unseen["methods"].get(m)
            if stats and stats.get("users"):
                label = METHODS[m].label + (" (trained with it)" if m == "federated_dp" else "")
                rows.append([label, *[_cell(stats.get(k)) for k in METRIC_NAMES]])
        lines += [format_table(rows, markdown=True), ""]
    lines += ["## Privacy–utility (federated, test NDCG@10)", ""]
    rows = [["ε", *[f"σ {n}" for n in names], *[f"NDCG@10 {n}" for n in names], "mean"]]
    for point in results["privacy_utility"]:
        rows.append(
            [_eps_text(point["epsilon"])]
            + [f"{point['noise_multiplier'][n]:.3f}" for n in names]
            + [_cell(point["ndcg@10"][n]) for n in names]
            + [_cell(point["mean_ndcg@10"])]
        )
    lines += [
        "σ is the noise multiplier each platform needed to stay within ε over all rounds "
        "(0 without DP).",
        "",
        format_table(rows, markdown=True),
        "",
    ]
    if "privacy_utility" in plots:
        lines += [f"![privacy–utility]({plots['privacy_utility']})", ""]
    lines += [
        "## Per round",
        "",
        "Validation NDCG@10 per round on the first "
        f"{results['curve_users'] or 'all'} users of each platform (federation.eval_users, as "
        "`fedxrec simulate` does; round 0 = the untuned encoder), and ε spent per round, mean "
        "over seeds.",
        "",
    ]
    for key, alt in (
        ("ndcg_rounds", "validation NDCG@10 per round"),
        ("epsilon_rounds", "ε per round"),
    ):
        if key in plots:
            lines += [f"![{alt}]({plots[key]})", ""]
    lines += [
        "## Reading this report",
        "",
        "- Every number is in `results.json` (per run, per seed, per platform, with each user's "
        "test rank), with the configuration and the platform data in `platforms/`.",
        "- Popularity and ItemKNN learn only from training sequences (all but the last two items "
        "of every user); a user is scored from the history of the split ranked, as the encoder "
        "does. Centralized pools every platform's data in one training set and is evaluated per "
        "platform on that platform's catalogue only.",
        "- Not covered by DP: the counts and metrics in this report.",
        "",
    ]
    return "\n".join(lines)


def observations(results: dict[str, Any]) -> list[str]:
    """Plain statements of what the numbers show (the report must explain, not only list)."""
    summary = results["summary"]
    names = list(results["platforms"])
    lines = ["### What the numbers show", ""]

    def mean_of(method: str, slice_name: str = "all") -> float | None:
        return _stat(summary, method, None, slice_name)

    ranked = sorted(
        (
            (m, v)
            for m in METHODS
            if m not in ("federated_eps", "federated_unseen") and (v := mean_of(m)) is not None
        ),
        key=lambda x: -x[1],
    )
    if ranked:
        lines.append(
            "- Platform-mean test NDCG@10, best first: "
            + ", ".join(f"{METHODS[m].label} {v:.4f}" for m, v in ranked)
            + "."
        )
    dp, no_dp = mean_of("federated_dp"), mean_of("federated_no_dp")
    if dp is not None and no_dp:
        lines.append(
            f"- The price of privacy at ε={_eps_text(results['product_epsilon'])}: federated DP "
            f"keeps {dp / no_dp:.0%} of the non-private federation's NDCG@10 ({dp:.4f} vs "
            f"{no_dp:.4f})."
        )
    zero = mean_of("zero_shot")
    if dp is not None and zero:
        lines.append(
            f"- Fine-tuning (federated DP) vs the untuned encoder: {dp:.4f} vs {zero:.4f} "
            f"({(dp - zero) / zero:+.0%})."
        )
    if dp is not None and zero is not None and abs(dp - zero) < 1e-3:
        sigmas = [
            v
            for point in results["privacy_utility"]
            if point["epsilon"] == results["product_epsilon"]
            for v in point["noise_multiplier"].values()
        ]
        noise = f" (noise multiplier up to {max(sigmas):.2f})" if sigmas else ""
        lines.append(
            "- Federated DP ranks within 0.001 NDCG@10 of the untuned encoder: under DP"
            f"{noise} the adapter barely moved from its start in "
            f"{results['config']['federation.rounds']} rounds; more rounds, users or a larger "
            "learning rate are what would change that."
        )
    best_baseline = max(
        ((m, mean_of(m)) for m in ("popularity", "itemknn") if mean_of(m) is not None),
        key=lambda x: x[1],
        default=None,
    )
    if best_baseline and dp is not None:
        m, v = best_baseline
        relation = "above" if dp > v else "below"
        lines.append(
            f"- The strongest non-neural baseline is {METHODS[m].label} ({v:.4f}); federated DP "
            f"is {relation} it."
        )
    fed_std = [
        summary["federated_dp"]["platforms"][n]["all"]["ndcg@10"]["std"]
        for n in names
        if "federated_dp" in summary and "ndcg@10" in summary["federated_dp"]["platforms"][n]["all"]
    ]
    if len(results["seeds"]) == 1:
        lines.append(
            "- One seed only: differences smaller than a few thousandths of NDCG@10 are within "
            "training noise and should not be read as a ranking of methods."
        )
    elif fed_std:
        lines.append(
            f"- Seed-to-seed spread of federated DP NDCG@10 per platform: up to "
            f"{max(fed_std):.4f}; smaller gaps between methods are not meaningful."
        )
    if results["quick"]:
        lines.append(
            "- This is a --quick run (a user subset, few rounds): it checks that everything runs; "
            "its numbers are not the published results."
        )
    return lines


def make_plots(results: dict[str, Any], folder: Path) -> dict[str, str]:
    """Write the PNGs; returns their paths relative to the report."""
    runs, summary = results["runs"], results["summary"]
    plots: dict[str, str] = {}

    def curves(field: str, methods: Iterable[str]) -> dict[str, dict[str, list]]:
        out: dict[str, dict[str, list]] = {}
        for method in methods:
            method_runs = [r for r in runs if r["method"] == method and r["rounds"]]
            if not method_runs:
                continue
            per: dict[str, list] = {}
            names = list(
                dict.fromkeys(p for r in method_runs for e in r["rounds"] for p in e.get(field, {}))
            )
            for name in names:
                by_round: dict[int, list[float]] = {}
                for r in method_runs:
                    for entry in r["rounds"]:
                        value = entry.get(field, {}).get(name)
                        if value is not None and math.isfinite(value):
                            by_round.setdefault(entry["round"], []).append(value)
                per[name] = [
                    (rnd, (s := mean_std(v))["mean"], s["std"])
                    for rnd, v in sorted(by_round.items())
                ]
            out[METHODS[method].label] = per
        return out

    ndcg = curves("validation_ndcg@10", CURVE_METHODS)
    if ndcg:
        plots["ndcg_rounds"] = plot_rounds(
            ndcg,
            folder / "ndcg_per_round.png",
            ylabel="validation NDCG@10",
            title="Validation NDCG@10 per round, per platform",
        )
    eps = curves("epsilon", ("federated_dp", "local_only", "federated_unseen"))
    eps = {m: {p: c for p, c in per.items() if p in results["platforms"]} for m, per in eps.items()}
    if any(eps.values()):
        plots["epsilon_rounds"] = plot_rounds(
            eps,
            folder / "epsilon_per_round.png",
            ylabel="ε spent",
            title="Privacy spent per round, per platform",
        )
    points = results["privacy_utility"]
    if points:
        lines = {
            n: [(p["epsilon"], p["ndcg@10"][n]["mean"], p["ndcg@10"][n]["std"]) for p in points]
            for n in results["platforms"]
        }
        lines["mean"] = [
            (p["epsilon"], p["mean_ndcg@10"]["mean"], p["mean_ndcg@10"]["std"]) for p in points
        ]
        refs = {
            METHODS[m].label: v
            for m in ("centralized", "local_only", "zero_shot", "itemknn")
            if (v := _stat(summary, m, None)) is not None
        }
        plots["privacy_utility"] = plot_privacy_utility(
            lines,
            refs,
            folder / "privacy_utility.png",
            title=f"Privacy–utility on {results['dataset']} (mean over platforms and seeds)",
        )
    bars = {}
    for method, spec in METHODS.items():
        entry = summary.get(method)
        if method in ("federated_eps", "federated_unseen") or entry is None:
            continue
        values = {
            n: (c["all"]["ndcg@10"]["mean"], c["all"]["ndcg@10"]["std"])
            for n, c in entry["platforms"].items()
            if "ndcg@10" in c["all"]
        }
        if "ndcg@10" in entry["mean"].get("all", {}):
            values["mean"] = (
                entry["mean"]["all"]["ndcg@10"]["mean"],
                entry["mean"]["all"]["ndcg@10"]["std"],
            )
        bars[spec.label] = values
    if bars:
        plots["methods"] = plot_methods(
            bars, folder / "methods.png", title=f"Test NDCG@10 on {results['dataset']}"
        )
    return {k: str(Path(v).relative_to(folder.parent)) for k, v in plots.items()}


# ---- the command --------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare the federated private recommender with baselines (report + results.json)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output folder (a re-used one starts fresh, unless --resume)",
    )
    p.add_argument("--data", help="ml-100k, ml-1m, or a folder of your own data (data.dataset)")
    p.add_argument(
        "--seeds",
        type=int,
        help=f"training seeds, mean ± std over them (default {DEFAULT_SEEDS}; --quick: 1)",
    )
    p.add_argument(
        "--epsilons",
        help=f"ε of the privacy–utility sweep, inf = no DP (default {DEFAULT_EPSILONS}; "
        f"--quick: {QUICK_EPSILONS}); the product's ε is privacy.epsilon",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a subset that checks everything runs in minutes: "
        + ", ".join(f"{k}={v}" for k, v in QUICK_OVERRIDES.items())
        + ", 1 seed, ε 8 and inf (--set still overrides)",
    )
    p.add_argument(
        "--unseen",
        help="platform left out of one federation and ranked with its adapter (default: the last "
        "platform; 'none' to skip)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a stopped comparison in the same --out: runs already in its results.json "
        "(same settings) are kept, the rest are run; more --seeds or --epsilons may be added",
    )
    add_config_arguments(p, "federation.rounds=10")
    p.set_defaults(run=run)


def compare_plan(args: argparse.Namespace) -> ComparePlan:
    cfg = FedxrecConfig.load(args.config)
    if args.quick:
        cfg = cfg.with_overrides(QUICK_OVERRIDES)
    cfg = cfg.with_overrides(parse_overrides(args.set))
    if args.data:
        cfg = cfg.with_overrides({"data.dataset": args.data})
    seeds = args.seeds if args.seeds is not None else (1 if args.quick else DEFAULT_SEEDS)
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    if not cfg.privacy.epsilon > 0:
        raise ConfigError("privacy.epsilon (the product's ε) must be > 0")
    return ComparePlan(
        cfg=cfg,
        seeds=[cfg.train.seed + k for k in range(seeds)],
        epsilons=parse_epsilons(
            args.epsilons or (QUICK_EPSILONS if args.quick else DEFAULT_EPSILONS)
        ),
        unseen=args.unseen,  # resolved against the loaded platforms by resolve_unseen
        quick=args.quick,
    )


def command_line(args: argparse.Namespace) -> str:
    """The command as typed when run from the console script, else rebuilt from the options."""
    if Path(sys.argv[0]).name == "fedxrec" and len(sys.argv) > 1:
        return "fedxrec " + " ".join(sys.argv[1:])
    parts = ["fedxrec compare", f"--out {args.out}"]
    for flag in ("data", "seeds", "epsilons", "unseen", "config"):
        value = getattr(args, flag)
        if value is not None:
            parts.append(f"--{flag.replace('_', '-')} {value}")
    parts += ["--quick"] if args.quick else []
    parts += ["--resume"] if args.resume else []
    parts += [f"--set {item}" for item in args.set]
    return " ".join(parts)


def resolve_unseen(requested: str | None, names: list[str]) -> str | None:
    """The platform left out of the unseen-platform federation: default the last one."""
    if requested is not None and requested.lower() == "none":
        return None
    if requested is None:
        return names[-1] if len(names) >= 2 else None
    if requested not in names:
        raise ValueError(f"--unseen {requested}: no such platform (have {', '.join(names)})")
    if len(names) < 2:
        raise ValueError("--unseen needs at least two platforms (one left out, one federated)")
    return requested


def write_outputs(exp: Experiment, out: Path, *, complete: bool) -> dict[str, Any]:
    results = exp.results(complete=complete)
    plots = make_plots(results, out / "plots") if exp.runs else {}
    (out / "report.md").write_text(render_report(results, plots))
    write_json(out / "results.json", results)
    return results


def run(args: argparse.Namespace, make_rec: RecFactory | None = None) -> int:
    plan = compare_plan(args)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for name in () if args.resume else OUTPUTS:  # a re-run is a new experiment
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    if plan.cfg.train.threads:
        torch.set_num_threads(plan.cfg.train.threads)
    print(
        f"fedxrec compare: preparing platforms from {plan.cfg.data.dataset} in {out}/platforms",
        flush=True,
    )
    platforms = load_platforms(plan.cfg, out / "platforms")
    plan = dataclasses.replace(
        plan, unseen=resolve_unseen(plan.unseen, [p.name for p in platforms])
    )
    previous = load_previous_runs(out / "results.json", plan, platforms) if args.resume else []
    exp = Experiment(
        plan,
        platforms,
        make_rec or default_recommender_factory(plan.cfg),
        log=lambda line: print(line, flush=True),
        on_run=lambda e: write_outputs(e, out, complete=False),
        command=command_line(args),
        device=str(pick_device(plan.cfg.train.device)),
        previous_runs=previous,
    )
    exp.run()
    results = write_outputs(exp, out, complete=True)
    print()
    print(format_table(_method_rows(results, None)))
    print()
    for t in results["targets"]:
        state = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        print(f"  [{state}] {t['target']}: {t['detail']}")
    print(
        f"\nfedxrec compare: done in {results['seconds'] / 60:.1f} min. Report: {out / 'report.md'};"
        f" every figure: {out / 'results.json'}"
    )
    return 0
