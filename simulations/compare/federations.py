"""A comparison's training runs: each one a federation of the product's coordinator and sites.

``train`` runs server.server_app's Coordinator over the in-process Grid
(simulations/inprocess.py) on the sites' data folders and returns what the comparison keeps: the
global adapter, each site's personal adapter, and one record per round (validation NDCG@10 per
platform of the curve, each trained site's ε, σ, δ and loss), read from the federation's own
metrics.json. A platform of the curve that is not a site of the federation (the unseen platform,
the platforms of the pooled data) is evaluated with the round's saved global adapter.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.config import FedxrecConfig
from shared.data import PlatformData
from simulations.compare.evaluation import Evaluator
from simulations.compare.records import RoundRecord
from simulations.inprocess import FederationRun, federate

Arrays = dict[str, np.ndarray]
Log = Callable[[str], None]
REPORTED = ("epsilon", "noise_multiplier", "delta", "loss")  # a site's TrainingRecord fields
# What a comparison shows of a federation's own output: its rounds and any site that refused.
SHOWN = ("done —", "refuse", "fewer than", "did not", "could not", "failed")


@dataclass
class Trained:
    rounds: list[RoundRecord]
    global_adapter: Arrays
    personal: dict[str, Arrays]  # the sites that personalised


def train(
    sites: dict[str, Path],
    cfg: FedxrecConfig,
    *,
    curve_on: list[PlatformData],
    evaluator: Evaluator,
    round_zero: dict[str, float],
    work: Path,
    run_id: int,
    log: Log,
    best_round: bool = False,
) -> Trained:
    """Federate ``sites`` (name → data folder) with ``cfg``; ``round_zero`` is the untuned
    encoder's validation NDCG@10 per platform (every curve starts there). ``best_round``: the
    global adapter is the round's with the best mean validation NDCG@10 of the curve (early
    stopping, for the non-private references, whose best length differs by data set), not the
    last round's."""
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work, prefix="federation-") as tmp:
        run = federate(sites, cfg, Path(tmp), run_id=run_id, on_line=_shown(log))
        rounds = _rounds(run, list(sites), curve_on, evaluator, round_zero)
        final = run.global_adapter()
        if best_round and len(rounds) > 1:
            best = best_validation_round(rounds)
            log(f"kept round {best} of {len(rounds) - 1} (best validation NDCG@10)")
            final = run.round_adapter(best)
        return Trained(rounds, final, run.personal_adapters())


def best_validation_round(rounds: list[RoundRecord]) -> int:
    """The trained round (≥ 1) with the best validation NDCG@10, averaged over the curve's
    platforms; the earliest of equals."""
    trained = [r for r in rounds if r.round >= 1]
    if not trained:
        raise ValueError("no trained round to choose from")
    return max(trained, key=lambda r: float(np.mean(list(r.validation_ndcg.values())))).round


def _shown(log: Log) -> Log:
    def show(line: str) -> None:
        if any(part in line for part in SHOWN):
            log(line.replace("[fedxrec] ", "").strip())

    return show


def _rounds(
    run: FederationRun,
    sites: list[str],
    curve_on: list[PlatformData],
    evaluator: Evaluator,
    round_zero: dict[str, float],
) -> list[RoundRecord]:
    log = run.log
    out = [
        RoundRecord(
            0,
            validation_ndcg={p.name: round_zero[p.name] for p in curve_on},
            epsilon=dict.fromkeys(sites, 0.0),
        )
    ]
    for entry in log.rounds[1:]:
        server_round = entry["round"]
        reports = entry["platforms"]
        ndcg = {}
        for data in curve_on:
            validation = reports.get(data.name, {}).get("validation")
            if validation is None:  # not a site of this federation: evaluate its adapter
                arrays = run.round_adapter(server_round)
                ndcg[data.name] = evaluator.validation_ndcg(arrays, data)
            else:
                ndcg[data.name] = validation["ndcg@10"]
        trained = {n: m for n, m in reports.items() if "loss" in m}
        out.append(
            RoundRecord(
                server_round,
                validation_ndcg=ndcg,
                **{f: {n: m[f] for n, m in trained.items()} for f in REPORTED},
            )
        )
    return out
