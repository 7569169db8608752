"""What a comparison records, typed: the methods, each run, the summaries over seeds, the targets.

``results.json`` is ``ComparisonResults.to_json()``; its keys are the field names here (a round's
``validation_ndcg`` is written ``validation_ndcg@10``). Runs are read back with
``RunRecord.from_json`` when a comparison resumes.
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 2
SLICES = ("all", "cold_users", "cold_items", "new_items")
SLICE_USERS = SLICES[1:]  # the slices whose users results.json lists per platform
LOCAL_SUFFIX = "+local"


class Method(enum.StrEnum):
    """Every method a comparison can report; ``…+local`` is the site's final ranking with that
    method's model (the model fused with the site's own counts)."""

    POPULARITY = "popularity"
    ITEMKNN = "itemknn"
    EASE = "ease"
    ZERO_SHOT = "zero_shot"
    LOCAL_ONLY = "local_only"
    FEDERATED_DP = "federated_dp"
    FEDERATED_DP_PERSONALIZED = "federated_dp_personalized"
    FEDERATED_DP_HEAD_ONLY = "federated_dp_head_only"
    FEDERATED_NO_DP = "federated_no_dp"
    CENTRALIZED = "centralized"
    FEDERATED_UNSEEN = "federated_unseen"
    FEDERATED_EPS = "federated_eps"  # the product's final ranking at the sweep's other ε
    ZERO_SHOT_LOCAL = "zero_shot+local"
    LOCAL_ONLY_LOCAL = "local_only+local"
    FEDERATED_DP_LOCAL = "federated_dp+local"
    FEDERATED_DP_PERSONALIZED_LOCAL = "federated_dp_personalized+local"
    CENTRALIZED_LOCAL = "centralized+local"

    @property
    def with_local(self) -> Method:
        """This method's model fused with the site's own counts."""
        return Method(self.value + LOCAL_SUFFIX)

    @property
    def is_local_fusion(self) -> bool:
        return self.value.endswith(LOCAL_SUFFIX)


@dataclass(frozen=True)
class Stat:
    """A figure over seeds: mean, sample standard deviation (0 for one seed) and count."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        mean = math.fsum(values) / len(values)
        var = (
            math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0
        )
        return cls(mean, math.sqrt(var), len(values))


INTERVAL_KEY = "ndcg@10_interval95"
Metrics = dict[str, float]  # one slice: ranking metrics and "users"
PlatformTest = dict[str, Metrics]  # slice -> metrics


@dataclass
class RoundRecord:
    """One round of a run: validation NDCG@10 per platform of the curve, and what each trained
    site reported (ε spent after the round, σ, δ, mean loss)."""

    round: int
    validation_ndcg: dict[str, float] = field(default_factory=dict)
    epsilon: dict[str, float] = field(default_factory=dict)
    noise_multiplier: dict[str, float] = field(default_factory=dict)
    delta: dict[str, float] = field(default_factory=dict)
    loss: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["validation_ndcg@10"] = out.pop("validation_ndcg")
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoundRecord:
        values = {k: v for k, v in data.items() if k != "validation_ndcg@10"}
        values["epsilon"] = {n: _float(v) for n, v in values.get("epsilon", {}).items()}
        return cls(validation_ndcg=data.get("validation_ndcg@10", {}), **values)


@dataclass
class RunRecord:
    """One method of one seed (or a deterministic method): test figures and each user's rank."""

    key: str
    method: Method
    seed: int | None
    epsilon: float | None  # None: no training; inf: trained without DP
    trained_on: list[str]
    seconds: float
    test: dict[str, PlatformTest]  # platform -> slice -> metrics
    ranks: dict[str, list[int]]  # platform -> each user's test rank
    rounds: list[RoundRecord]
    fusion: dict[str, Any] | None = None  # platform -> the fitted fusion (a "+local" run)

    def ndcg(self, platform: str, slice_name: str = "all") -> float | None:
        cell = self.test.get(platform, {}).get(slice_name, {})
        return cell.get("ndcg@10") if cell.get("users") else None

    def platform_mean(self, slice_name: str, metric: str) -> float | None:
        values = [
            m[slice_name][metric]
            for m in self.test.values()
            if m.get(slice_name, {}).get("users")  # results from before the slice have none
        ]
        return math.fsum(values) / len(values) if values else None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["method"] = str(self.method)
        out["rounds"] = [r.to_json() for r in self.rounds]
        if self.fusion is None:
            del out["fusion"]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        values = dict(data)
        values["method"] = Method(values["method"])
        values["epsilon"] = _float(values["epsilon"])
        values["rounds"] = [RoundRecord.from_json(r) for r in values["rounds"]]
        return cls(**values)


@dataclass
class SliceSummary:
    users: int
    metrics: dict[str, Stat] = field(default_factory=dict)
    # 95 % bootstrap interval over users of NDCG@10 (each user's figure averaged over seeds):
    # how far a small site's figure can be trusted
    interval: tuple[float, float] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "users": self.users,
            **{k: asdict(v) for k, v in self.metrics.items()},
        }
        if self.interval is not None:
            out[INTERVAL_KEY] = [round(x, 6) for x in self.interval]
        return out


@dataclass
class MethodSummary:
    """A method over its seeds: per platform and slice, and the platform mean."""

    seeds: list[int | None]
    epsilon: float | None
    platforms: dict[str, dict[str, SliceSummary]]  # platform -> slice -> summary
    mean: dict[str, dict[str, Stat]]  # slice -> metric -> the platform mean over seeds

    def stat(
        self, platform: str | None = None, slice_name: str = "all", metric: str = "ndcg@10"
    ) -> Stat | None:
        """``metric`` on ``platform`` (None: the platform mean), or None where not measured."""
        if platform is None:
            return self.mean.get(slice_name, {}).get(metric)
        cell = self.platforms.get(platform, {}).get(slice_name)
        return None if cell is None else cell.metrics.get(metric)

    def to_json(self) -> dict[str, Any]:
        return {
            "seeds": self.seeds,
            "epsilon": self.epsilon,
            "platforms": {
                n: {s: c.to_json() for s, c in cells.items()} for n, cells in self.platforms.items()
            },
            "mean": {s: {k: asdict(v) for k, v in m.items()} for s, m in self.mean.items()},
        }


Summary = dict[Method, MethodSummary]


def mean_ndcg(
    summary: Summary, method: Method, platform: str | None = None, slice_name: str = "all"
) -> float | None:
    """Mean NDCG@10 of ``method`` on ``platform`` (None = platform mean), or None if not run."""
    entry = summary.get(method)
    found = None if entry is None else entry.stat(platform, slice_name)
    return None if found is None else found.mean


@dataclass(frozen=True)
class Target:
    target: str
    met: bool | None  # None: a method it needs did not run
    detail: str


@dataclass
class PlatformInfo:
    users: int
    items: int
    interactions: int
    slices: dict[str, list[int]]  # cold_users, cold_items, new_items: their users
    curve_users: list[int]


@dataclass
class UnseenPlatform:
    platform: str
    trained_on: list[str]
    methods: dict[Method, SliceSummary]  # the methods' "all" slice on the unseen platform

    def to_json(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "trained_on": self.trained_on,
            "methods": {str(m): s.to_json() for m, s in self.methods.items()},
        }


@dataclass
class PrivacyPoint:
    """The product's final ranking at one ε (∞: the federation without DP)."""

    epsilon: float
    noise_multiplier: dict[str, float]
    epsilon_spent: dict[str, float]
    ndcg: dict[str, Stat]
    mean_ndcg: Stat
    seeds: list[int | None]

    def to_json(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon,
            "noise_multiplier": self.noise_multiplier,
            "epsilon_spent": self.epsilon_spent,
            "ndcg@10": {n: asdict(s) for n, s in self.ndcg.items()},
            "mean_ndcg@10": asdict(self.mean_ndcg),
            "seeds": self.seeds,
        }


@dataclass
class ComparisonResults:
    """Everything a comparison measured: results.json, the report and the plots are made of it."""

    complete: bool
    command: str
    created: str
    commit: str  # the code that ran: HEAD when the comparison started
    machine: dict[str, Any]
    seconds: float
    dataset: str
    split: str
    protocol: str
    seeds: list[int]
    quick: bool
    trained_methods: list[Method]
    epsilons: list[float]
    product_epsilon: float
    delta: dict[str, float]  # each platform ledger's δ
    privacy: dict[str, Any]
    slices: dict[str, str]  # slice -> what it holds
    curve_users: int
    config: dict[str, Any]
    methods: dict[Method, dict[str, str]]  # label, trained_on, privacy
    platforms: dict[str, PlatformInfo]
    unseen_platform: UnseenPlatform | None
    summary: Summary
    privacy_utility: list[PrivacyPoint]
    targets: list[Target]
    runs: list[RunRecord]
    schema_version: int = SCHEMA_VERSION
    tool: str = "fedxrec compare"

    @property
    def names(self) -> list[str]:
        return list(self.platforms)

    def to_json(self) -> dict[str, Any]:
        head = {"schema_version": self.schema_version, "tool": self.tool}
        plain = {
            k: v
            for k, v in self.__dict__.items()
            if k not in ("schema_version", "tool", "summary", "runs", "platforms", "targets")
            and k not in ("unseen_platform", "privacy_utility", "methods", "trained_methods")
        }
        return {
            **head,
            **plain,
            "trained_methods": [str(m) for m in self.trained_methods],
            "methods": {str(m): v for m, v in self.methods.items()},
            "platforms": {n: asdict(p) for n, p in self.platforms.items()},
            "unseen_platform": self.unseen_platform.to_json() if self.unseen_platform else None,
            "summary": {str(m): s.to_json() for m, s in self.summary.items()},
            "privacy_utility": [p.to_json() for p in self.privacy_utility],
            "targets": [asdict(t) for t in self.targets],
            "runs": [r.to_json() for r in self.runs],
        }


def _float(value: Any) -> Any:
    """∞ and NaN as results.json writes them ("inf", "nan") back to floats."""
    return {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}.get(value, value)
