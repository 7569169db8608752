"""A comparison's plots: per-round curves, privacy–utility, and methods side by side."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

from simulations.compare.plan import CURVE_METHODS, METHODS
from simulations.compare.records import ComparisonResults, Method, RoundRecord, Stat
from simulations.compare.records import mean_ndcg as stat
from simulations.plots import plot_methods, plot_privacy_utility, plot_rounds

M = Method


def make_plots(results: ComparisonResults, folder: Path) -> dict[str, str]:
    """Write the PNGs; returns their paths relative to the report."""
    runs, summary = results.runs, results.summary
    plots: dict[str, str] = {}

    def curves(
        field: Callable[[RoundRecord], dict[str, float]], methods: Iterable[Method]
    ) -> dict[str, dict[str, list]]:
        out: dict[str, dict[str, list]] = {}
        for method in methods:
            method_runs = [r for r in runs if r.method == method and r.rounds]
            if not method_runs:
                continue
            per: dict[str, list] = {}
            names = list(dict.fromkeys(p for r in method_runs for e in r.rounds for p in field(e)))
            for name in names:
                by_round: dict[int, list[float]] = {}
                for r in method_runs:
                    for entry in r.rounds:
                        value = field(entry).get(name)
                        if value is not None and math.isfinite(value):
                            by_round.setdefault(entry.round, []).append(value)
                per[name] = [
                    (rnd, (s := Stat.of(v)).mean, s.std) for rnd, v in sorted(by_round.items())
                ]
            out[METHODS[method].label] = per
        return out

    ndcg = curves(lambda e: e.validation_ndcg, CURVE_METHODS)
    if ndcg:
        plots["ndcg_rounds"] = plot_rounds(
            ndcg,
            folder / "ndcg_per_round.png",
            ylabel="validation NDCG@10",
            title="Validation NDCG@10 per round, per platform",
        )
    eps = curves(lambda e: e.epsilon, (M.FEDERATED_DP, M.LOCAL_ONLY, M.FEDERATED_UNSEEN))
    eps = {m: {p: c for p, c in per.items() if p in results.platforms} for m, per in eps.items()}
    if any(eps.values()):
        plots["epsilon_rounds"] = plot_rounds(
            eps,
            folder / "epsilon_per_round.png",
            ylabel="ε spent",
            title="Privacy spent per round, per platform",
        )
    points = results.privacy_utility
    if points:
        lines = {
            n: [(p.epsilon, p.ndcg[n].mean, p.ndcg[n].std) for p in points]
            for n in results.platforms
        }
        lines["mean"] = [(p.epsilon, p.mean_ndcg.mean, p.mean_ndcg.std) for p in points]
        refs = {
            METHODS[m].label: v
            for m in (M.CENTRALIZED, M.LOCAL_ONLY, M.ZERO_SHOT, M.ITEMKNN)
            if (v := stat(summary, m, None)) is not None
        }
        plots["privacy_utility"] = plot_privacy_utility(
            lines,
            refs,
            folder / "privacy_utility.png",
            title=f"Privacy–utility on {results.dataset} (mean over platforms and seeds)",
        )
    bars = {}
    for method, spec in METHODS.items():
        entry = summary.get(method)
        if method in (M.FEDERATED_EPS, M.FEDERATED_UNSEEN) or entry is None:
            continue
        values = {n: (s.mean, s.std) for n in entry.platforms if (s := entry.stat(n)) is not None}
        if (mean := entry.stat(None)) is not None:
            values["mean"] = (mean.mean, mean.std)
        bars[spec.label] = values
    if bars:
        plots["methods"] = plot_methods(
            bars, folder / "methods.png", title=f"Test NDCG@10 on {results.dataset}"
        )
    return {k: str(Path(v).relative_to(folder.parent)) for k, v in plots.items()}
