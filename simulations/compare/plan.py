"""What a comparison runs: its methods, seeds, ε, and the configuration of each training run."""

from __future__ import annotations

import argparse
import math
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.config import ConfigError, FedxrecConfig
from shared.config_files import parse_overrides
from shared.data import PlatformData
from simulations.compare.records import Method
from simulations.data.partition import data_overrides

COLD_USER_MAX_INTERACTIONS = 5  # a user with at most this many interactions on the platform
COLD_ITEM_MAX_TRAINING = 5  # a test item with at most this many training interactions
# The new-item slice's cut-off: the time after which this share of the catalogue first appeared
# (0.1 left 17-58 users per ML-100K genre platform, too few to read; 0.2 leaves 87-117)
NEW_ITEM_SHARE = 0.2
DEFAULT_SEEDS = 3
DEFAULT_EPSILONS = "1,2,4,8,inf"
# --quick: a subset that runs every method in well under 15 minutes on 2 CPU cores
QUICK_OVERRIDES: dict[str, Any] = {
    "data.max_users": 60,
    "federation.rounds": 2,
    "federation.eval_users": 30,
    "train.steps": 8,
    "train.lora_steps": 1,
    "train.lora_items": 1,
}
QUICK_EPSILONS = "8,inf"
OUTPUTS = ("platforms", "plots", "results.json", "report.md")
# The non-private references (centralized, federated without DP) train with their own settings,
# chosen for the centralized model on the validation split (docs/experiments/transformer-recipe.md):
# without noise the transformer needs dropout (without it ML-100K's validation fell from 0.135 to
# 0.112 over 600 steps), smaller batches and more steps; each keeps its round with the best
# validation NDCG@10 (federations.best_validation_round), as the best length differs by data set.
# They are not personalised (their numbers are the global model's).
NO_DP_OVERRIDES: dict[str, Any] = {
    "train.steps": 200,
    "train.batch_size": 256,
    "train.learning_rate": 0.001,
    "model.dropout": 0.2,
    "train.personalize_steps": 0,
}


@dataclass(frozen=True)
class MethodSpec:
    label: str
    trained_on: str
    privacy: str


M = Method
# Summary order; FEDERATED_EPS holds the other ε of the privacy–utility sweep.
METHODS: OrderedDict[Method, MethodSpec] = OrderedDict(
    [
        (M.POPULARITY, MethodSpec("Popularity", "own platform", "none (counts)")),
        (M.ITEMKNN, MethodSpec("ItemKNN", "own platform", "none (co-occurrence)")),
        (M.EASE, MethodSpec("EASE", "own platform", "none (co-occurrence)")),
        (M.ZERO_SHOT, MethodSpec("Zero-shot encoder", "nothing", "nothing learned")),
        (M.LOCAL_ONLY, MethodSpec("Local-only (DP)", "own platform alone", "DP ε={eps}")),
        (
            M.FEDERATED_DP,
            MethodSpec("Federated (DP)", "all platforms, adapters only", "DP ε={eps}"),
        ),
        (
            M.FEDERATED_DP_PERSONALIZED,
            MethodSpec("Federated + personalised (DP)", "all, then own platform", "DP ε={eps}"),
        ),
        (
            M.FEDERATED_DP_HEAD_ONLY,
            MethodSpec("Federated, head only (DP)", "all platforms, head only", "DP ε={eps}"),
        ),
        (
            M.FEDERATED_NO_DP,
            MethodSpec("Federated (no DP)", "all platforms, adapters only", "none"),
        ),
        (M.CENTRALIZED, MethodSpec("Centralized (no DP)", "all platforms pooled", "none")),
        (
            M.FEDERATED_UNSEEN,
            MethodSpec("Federated without it (DP)", "the other platforms", "DP ε={eps}"),
        ),
        (
            M.FEDERATED_EPS,
            MethodSpec("Federated + personalised (DP, ε sweep)", "all, then own platform", "DP"),
        ),
    ]
)
# The site's final ranking: these models fused with the site's own collaborative signals
# (clients/scorer/fusion.py), weights fitted on each platform's validation split.
HYBRID_METHODS = (
    M.ZERO_SHOT,
    M.LOCAL_ONLY,
    M.FEDERATED_DP,
    M.FEDERATED_DP_PERSONALIZED,
    M.CENTRALIZED,
)
for _method in HYBRID_METHODS:
    _spec = METHODS[_method]
    METHODS[_method.with_local] = MethodSpec(
        f"{_spec.label} + local signals",
        f"{_spec.trained_on}; site's own counts",
        f"model: {_spec.privacy}; counts: the site's own",
    )
# The methods that train (one run per seed each; baselines and the zero-shot encoder always run).
TRAINED_METHODS = (
    M.FEDERATED_DP,
    M.LOCAL_ONLY,
    M.FEDERATED_DP_HEAD_ONLY,
    M.FEDERATED_NO_DP,
    M.CENTRALIZED,
    M.FEDERATED_UNSEEN,
    M.FEDERATED_EPS,
)
CURVE_METHODS = (M.FEDERATED_DP, M.FEDERATED_NO_DP, M.LOCAL_ONLY, M.CENTRALIZED, M.FEDERATED_UNSEEN)


@dataclass(frozen=True)
class ComparePlan:
    cfg: FedxrecConfig  # privacy.epsilon is the product's ε; every method sets privacy.enabled
    seeds: list[int]
    epsilons: list[float]  # the privacy–utility sweep; inf = no DP
    unseen: str | None  # platform left out of the "unseen platform" federation (None: no such run)
    quick: bool = False
    methods: tuple[Method, ...] = TRAINED_METHODS  # the training methods run (--methods)

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
        return sorted(set(self.epsilons) | {self.product_epsilon, math.inf})

    def config_for(self, seed: int, epsilon: float, method: Method | None = None) -> FedxrecConfig:
        """The product's settings at ``epsilon`` (∞ = no DP: the non-private settings), with the
        method's own changes: the head-only ablation trains no LoRA; the unseen platform's
        federation plans no personalisation (the platform it is tested on never trains)."""
        dp = math.isfinite(epsilon)
        changes: dict[str, Any] = {
            "train.seed": seed,
            "federation.seed": seed,
            "privacy.enabled": dp,
            "privacy.epsilon": epsilon if dp else self.product_epsilon,
        }
        if not dp:
            changes.update(NO_DP_OVERRIDES)
        if method == M.FEDERATED_DP_HEAD_ONLY:
            changes["train.lora_steps"] = 0
        if method == M.FEDERATED_UNSEEN:  # its held-out platform never trains
            changes["train.personalize_steps"] = 0
        return self.cfg.with_overrides(changes)


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


def parse_methods(text: str | None) -> tuple[Method, ...]:
    """--methods: a comma-separated subset of TRAINED_METHODS (None: all of them)."""
    if text is None:
        return TRAINED_METHODS
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in TRAINED_METHODS]
    if unknown or not names:
        raise ValueError(
            f"--methods: {', '.join(unknown) or 'nothing named'}; choose from "
            f"{', '.join(TRAINED_METHODS)} (baselines and the zero-shot encoder always run)"
        )
    return tuple(n for n in TRAINED_METHODS if n in names)


def eps_text(eps: float) -> str:
    return f"{eps:g}" if math.isfinite(eps) else "∞"


def spent_text(eps: float) -> str:
    return f"{eps:.2f}" if math.isfinite(eps) else "∞"


def run_key(method: Method, seed: int | None, epsilon: float | None) -> str:
    """A run's name in results.json and in the progress lines, e.g. 'federated_dp/seed0'."""
    if seed is None:
        return str(method)
    if method == M.FEDERATED_EPS:
        return f"federated_eps{eps_text(epsilon if epsilon is not None else math.inf)}/seed{seed}"
    return f"{method}/seed{seed}"


def compare_plan(args: argparse.Namespace) -> ComparePlan:
    cfg = FedxrecConfig.load(args.config)
    if args.quick:
        cfg = cfg.with_overrides(QUICK_OVERRIDES)
    cfg = cfg.with_overrides(parse_overrides(args.set))
    cfg = cfg.with_overrides(data_overrides(args))
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
        methods=parse_methods(getattr(args, "methods", None)),
    )


def command_line(args: argparse.Namespace) -> str:
    """The command as typed when run from the console script, else rebuilt from the options."""
    if Path(sys.argv[0]).name == "fedxrec" and len(sys.argv) > 1:
        return "fedxrec " + " ".join(sys.argv[1:])
    parts = ["fedxrec compare", f"--out {args.out}"]
    for flag in ("data", "seeds", "epsilons", "methods", "unseen", "config"):
        value = getattr(args, flag, None)
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


def unseen_runs(plan: ComparePlan, platforms: list[PlatformData]) -> bool:
    """Whether the comparison runs a federation without the unseen platform."""
    return plan.unseen is not None and len(platforms) >= 2 and M.FEDERATED_UNSEEN in plan.methods


def seed_plan(
    plan: ComparePlan, platforms: list[PlatformData]
) -> list[tuple[Method, float, list[PlatformData]]]:
    """(method, ε, platforms trained) of every training run of one seed, in running order."""
    product = plan.product_epsilon
    runs = [
        (M.FEDERATED_DP, product, platforms),
        (M.LOCAL_ONLY, product, platforms),
        (M.FEDERATED_DP_HEAD_ONLY, product, platforms),
        (M.FEDERATED_NO_DP, math.inf, platforms),
        (M.CENTRALIZED, math.inf, platforms),
    ]
    if unseen_runs(plan, platforms):
        runs.append((M.FEDERATED_UNSEEN, product, [p for p in platforms if p.name != plan.unseen]))
    runs += [
        (M.FEDERATED_EPS, eps, platforms)
        for eps in plan.federated_epsilons
        if eps != product and math.isfinite(eps)
    ]
    return [run for run in runs if run[0] in plan.methods]
