"""A comparison's plots: per-round curves, privacy–utility, and methods side by side."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from simulations.compare.plan import CURVE_METHODS, METHODS
from simulations.compare.results import mean_std
from simulations.compare.targets import stat
from simulations.plots import plot_methods, plot_privacy_utility, plot_rounds


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
            if (v := stat(summary, m, None)) is not None
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
