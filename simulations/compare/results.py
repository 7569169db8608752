"""A comparison's results: summaries over seeds, the targets, and results.json."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform as host
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from server.run_log import SPLIT
from shared.config import FedxrecConfig
from shared.data import PlatformData
from shared.metrics import METRIC_NAMES, bootstrap_interval, user_ndcg
from simulations.compare.plan import (
    COLD_ITEM_MAX_TRAINING,
    COLD_USER_MAX_INTERACTIONS,
    METHODS,
    NEW_ITEM_SHARE,
    ComparePlan,
)
from simulations.compare.records import (
    SLICE_USERS,
    SLICES,
    ComparisonResults,
    Method,
    MethodSummary,
    PlatformInfo,
    PrivacyPoint,
    RunRecord,
    SliceSummary,
    Stat,
    Summary,
    UnseenPlatform,
)
from simulations.compare.site_targets import site_targets
from simulations.compare.targets import check_targets

M = Method

if TYPE_CHECKING:
    from simulations.compare.runner import Experiment


def user_interval(runs: list[RunRecord], platform: str) -> tuple[float, float] | None:
    """95 % bootstrap interval over ``platform``'s users of NDCG@10, each user's figure the mean
    over the runs (seeds); None where the runs kept no ranks."""
    ranks = [r.ranks[platform] for r in runs if r.ranks.get(platform)]
    if not ranks or len({len(r) for r in ranks}) > 1:
        return None
    per_user = np.mean([user_ndcg(r) for r in ranks], axis=0)
    return bootstrap_interval(per_user.tolist())


def summarize_runs(runs: list[RunRecord]) -> Summary:
    """Per platform and platform mean, per slice and metric: mean ± std over seeds."""
    by_method: dict[Method, list[RunRecord]] = {}
    for run in runs:
        by_method.setdefault(run.method, []).append(run)
    summary: Summary = {}
    for method, method_runs in by_method.items():
        platforms: dict[str, dict[str, SliceSummary]] = {}
        names = list(dict.fromkeys(p for r in method_runs for p in r.test))
        for name in names:
            platforms[name] = {}
            for s in SLICES:
                cells = [r.test[name][s] for r in method_runs if s in r.test.get(name, {})]
                users = int(cells[0]["users"]) if cells else 0
                metrics = {k: Stat.of([c[k] for c in cells]) for k in METRIC_NAMES} if users else {}
                interval = user_interval(method_runs, name) if users and s == "all" else None
                platforms[name][s] = SliceSummary(users, metrics, interval)
        mean: dict[str, dict[str, Stat]] = {}
        for s in SLICES:
            mean[s] = {}
            for k in METRIC_NAMES:
                values = [v for r in method_runs if (v := r.platform_mean(s, k)) is not None]
                if values:
                    mean[s][k] = Stat.of(values)
        summary[method] = MethodSummary(
            seeds=[r.seed for r in method_runs],
            epsilon=method_runs[0].epsilon,
            platforms=platforms,
            mean=mean,
        )
    return summary


PRODUCT_AT_EPSILON = (M.FEDERATED_DP_PERSONALIZED, M.FEDERATED_NO_DP, M.FEDERATED_EPS)


def privacy_utility(runs: list[RunRecord], names: list[str]) -> list[PrivacyPoint]:
    """Test NDCG@10 of the product (federated, then personalised) at each ε, with the noise
    multiplier each platform needed; ∞ is the federation without DP (its global model)."""
    by_epsilon: dict[float, list[RunRecord]] = {}
    for run in runs:
        if run.method in PRODUCT_AT_EPSILON and run.epsilon is not None:
            by_epsilon.setdefault(run.epsilon, []).append(run)
    points = []
    for eps, eps_runs in sorted(by_epsilon.items()):
        last = [r.rounds[-1] for r in eps_runs]
        points.append(
            PrivacyPoint(
                epsilon=eps,
                noise_multiplier={
                    n: statistics.fmean(e.noise_multiplier.get(n, 0.0) for e in last) for n in names
                },
                epsilon_spent={n: max(e.epsilon.get(n, 0.0) for e in last) for n in names},
                ndcg={n: Stat.of([r.test[n]["all"]["ndcg@10"] for r in eps_runs]) for n in names},
                mean_ndcg=Stat.of([r.platform_mean("all", "ndcg@10") or 0.0 for r in eps_runs]),
                seeds=[r.seed for r in eps_runs],
            )
        )
    return points


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


def build_results(exp: Experiment, *, complete: bool) -> ComparisonResults:
    plan, names = exp.plan, [p.name for p in exp.platforms]
    summary = summarize_runs(exp.runs)
    deltas = {}  # each platform ledger's δ, from the DP runs
    for run in exp.runs:
        if run.epsilon is not None and math.isfinite(run.epsilon):
            for entry in run.rounds:
                deltas.update({n: d for n, d in entry.delta.items() if n in names})
    held_out = plan.unseen if exp.unseen_runs() else None
    unseen = None
    if held_out:
        unseen = UnseenPlatform(
            platform=held_out,
            trained_on=[n for n in names if n != held_out],
            methods={
                m: summary[m].platforms[held_out]["all"]
                for m in METHODS
                if m in summary and held_out in summary[m].platforms and m != M.FEDERATED_EPS
            },
        )
    return ComparisonResults(
        complete=complete,
        command=exp.command,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        commit=exp.commit,
        machine=machine_info(exp.device),
        seconds=time.perf_counter() - exp.started,
        dataset=plan.cfg.data.dataset,
        split=SPLIT,
        protocol="full ranking of each platform's whole catalogue, the user's history excluded, "
        "ties counted against the target; test split unless said otherwise",
        seeds=plan.seeds,
        quick=plan.quick,
        trained_methods=list(plan.methods),
        epsilons=plan.epsilons,
        product_epsilon=plan.product_epsilon,
        delta=deltas,
        privacy={
            "unit": "one user of one platform (all of their interactions)",
            "accountant": plan.cfg.privacy.accountant,
            "max_grad_norm": plan.cfg.privacy.max_grad_norm,
            # the "+local" rankings' counts: exact (0) or user-level DP with this ε of the site's own
            "local_epsilon": plan.cfg.privacy.local_epsilon,
            "local_max_items": plan.cfg.privacy.local_max_items,
        },
        slices={
            "cold_users": f"users with ≤ {COLD_USER_MAX_INTERACTIONS} interactions on the platform",
            "cold_items": f"users whose test item has ≤ {COLD_ITEM_MAX_TRAINING} training "
            "interactions on the platform",
            "new_items": f"users whose test item was first seen after the platform's cut-off "
            f"(the newest {NEW_ITEM_SHARE:.0%} of its items appeared after it); the site's counts "
            "hold only the interactions before it (the model trained on every training "
            "sequence)",
        },
        curve_users=plan.curve_users,
        config=plan.cfg.to_flat(),
        methods={k: dataclasses.asdict(m) for k, m in METHODS.items()},
        platforms={
            p.name: PlatformInfo(
                users=p.num_users,
                items=len(p.items),
                interactions=sum(len(s) for s in p.sequences),
                slices={s: exp.slices[p.name][s] for s in SLICE_USERS},
                curve_users=exp.curve_users[p.name],
            )
            for p in exp.platforms
        },
        unseen_platform=unseen,
        summary=summary,
        privacy_utility=privacy_utility(exp.runs, names),
        targets=check_targets(summary, names, plan.product_epsilon)
        + site_targets(
            summary,
            {p.name: p.num_users for p in exp.platforms},
            plan.cfg.data.partition,
            plan.product_epsilon,
        ),
        runs=exp.runs,
    )


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


def load_previous_runs(
    path: Path, plan: ComparePlan, platforms: list[PlatformData]
) -> list[RunRecord]:
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
    # a setting added since the earlier run counts as its default there (it did not exist)
    defaults = to_json(FedxrecConfig().to_flat())
    config = {**{k: v for k, v in defaults.items() if k not in config}, **config}
    differ = [k for k in sorted(set(flat) | set(config)) if flat.get(k) != config.get(k)]
    shapes = {p.name: [p.num_users, len(p.items)] for p in platforms}
    if {n: [p["users"], p["items"]] for n, p in saved_platforms.items()} != shapes:
        differ.append("the platforms")
    if differ:
        raise ValueError(
            f"--resume: {path} was made with other settings ({', '.join(differ)}); its runs "
            "cannot be mixed with these: use another --out, or drop --resume to start afresh"
        )
    try:
        return [RunRecord.from_json(r) for r in runs]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"--resume: {path} holds a run this version cannot read ({err}); use another --out "
            "or drop --resume"
        ) from None


def write_json(path: Path, results: ComparisonResults) -> None:
    tmp = path.with_suffix(".json.tmp")
    payload = to_json(results.to_json())
    tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False, allow_nan=False))
    os.replace(tmp, path)
