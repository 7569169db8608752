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
from shared.metrics import METRIC_NAMES
from simulations.compare.plan import (
    COLD_ITEM_MAX_TRAINING,
    COLD_USER_MAX_INTERACTIONS,
    METHODS,
    SCHEMA_VERSION,
    SLICES,
    ComparePlan,
)
from simulations.compare.targets import check_targets

if TYPE_CHECKING:
    from simulations.compare.runner import Experiment


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
        # the product's final ranking at each ε; ∞ is the federation without DP
        if run["method"] in ("federated_dp_personalized", "federated_no_dp", "federated_eps"):
            out.setdefault(run["epsilon"], []).append(run)
    return dict(sorted(out.items()))


def privacy_utility(runs: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """Test NDCG@10 of the product (federated, then personalised) at each ε, with the noise
    multiplier each platform needed; ∞ is the federation without DP (its global model)."""
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
    deltas = {}  # each platform ledger's δ, from the DP runs
    for run in exp.runs:
        if run["epsilon"] is not None and math.isfinite(run["epsilon"]):
            for entry in run["rounds"]:
                deltas.update({n: d for n, d in entry.get("delta", {}).items() if n in names})
    held_out = plan.unseen if exp.unseen_runs() else None
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
        "commit": exp.commit,  # the code that ran: HEAD when the comparison started
        "machine": machine_info(exp.device),
        "seconds": time.perf_counter() - exp.started,
        "dataset": plan.cfg.data.dataset,
        "split": SPLIT,
        "protocol": "full ranking of each platform's whole catalogue, the user's history excluded, "
        "ties counted against the target; test split unless said otherwise",
        "seeds": plan.seeds,
        "quick": plan.quick,
        "trained_methods": list(plan.methods),
        "epsilons": plan.epsilons,
        "product_epsilon": plan.product_epsilon,
        "delta": deltas,
        "privacy": {
            "unit": "one user of one platform (all of their interactions)",
            "accountant": plan.cfg.privacy.accountant,
            "max_grad_norm": plan.cfg.privacy.max_grad_norm,
            # the "+local" rankings' counts: exact (0) or user-level DP with this ε of the site's own
            "local_epsilon": plan.cfg.privacy.local_epsilon,
            "local_max_items": plan.cfg.privacy.local_max_items,
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
    return [run_from_json(r) for r in runs]


def write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(to_json(payload), indent=1, ensure_ascii=False, allow_nan=False))
    os.replace(tmp, path)
