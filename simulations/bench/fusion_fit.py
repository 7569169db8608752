"""The fusion fit, side by side: the 0.1 simplex grid, the pairwise ascent, the ascent with
count shrinkage κ, on the sites of a `fedxrec simulate` run (each site's personal model).

Then a new user's ranking (no history): popularity, the model's prior and their fitted mix.

Validation only, never the test split: each site's validation users are split in two halves
(even and odd positions); each fit is made on one half and scored on the other, overall and on
the cold items (validation targets with at most 5 training interactions), with the fit's
seconds. The grid is fitted without the significance rule, like the ascent, so that the two
searches are compared as searches.

    python -m simulations.bench.fusion_fit RUN_DIR [--sites a,b]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from clients.scorer.fusion import (
    FIT_USERS,
    KAPPAS,
    exclusion_mask,
    fit_fusion,
    fit_new_user_blend,
    fuse,
    new_user_scores,
    simplex_grid,
    standardised_signals,
    training_index,
)
from clients.scorer.model import load_scorer_model
from shared.data import load_platform
from shared.metrics import ranking_metrics, target_ranks
from simulations.report import format_table

COLD_MAX_TRAINING = 5


def _grid_fit(scores, local, histories, targets) -> dict[str, float]:
    signals = standardised_signals(scores, local, histories)
    rows, target = torch.arange(len(targets)), torch.as_tensor(targets)
    excluded = exclusion_mask(histories, local.items)
    excluded[rows, target] = False

    def ndcg(weights: dict[str, float]) -> float:
        fused = fuse(signals, weights)
        ranks = ((fused >= fused[rows, target].unsqueeze(1)) & ~excluded).sum(1).tolist()
        return ranking_metrics(ranks)["ndcg@10"]

    return max(simplex_grid(["model", *local.signals]), key=ndcg)


def site_rows(run: Path, site: str) -> list[list[str]]:
    data = load_platform(run / "platforms" / site, site)
    rec = load_scorer_model(run / "state" / site / "personal", device="cpu").rec
    local = training_index(data)
    counts = data.train_item_counts()
    pairs = [data.split(u, "validation") for u in range(min(data.num_users, 2 * FIT_USERS))]
    with torch.no_grad():
        scores = rec.scores([h for h, _ in pairs], rec.encode_items(data.item_texts))
    halves = [list(range(0, len(pairs), 2)), list(range(1, len(pairs), 2))]

    def part(users):
        return scores[users], [pairs[u][0] for u in users], [pairs[u][1] for u in users]

    fits = {
        "grid 0.1, κ 0": lambda s, h, t: (_grid_fit(s, local, h, t), 0.0),
        "ascent, κ 0": lambda s, h, t: _chosen(fit_fusion(s, local, h, t, 0.0, (0.0,))),
        f"ascent, κ ∈ {{{', '.join(f'{k:g}' for k in KAPPAS)}}}": lambda s, h, t: _chosen(
            fit_fusion(s, local, h, t, 0.0)
        ),
    }
    rows = []
    for name, fit in fits.items():
        overall, cold, seconds, chosen = [], [], 0.0, []
        for fit_on, score_on in (halves, halves[::-1]):
            start = time.perf_counter()
            weights, kappa = fit(*part(fit_on))
            seconds += time.perf_counter() - start
            s, h, t = part(score_on)
            ranks = target_ranks(fuse(standardised_signals(s, local, h, kappa), weights), t, h)
            overall += ranks
            cold += [
                r for r, target in zip(ranks, t, strict=True) if counts[target] <= COLD_MAX_TRAINING
            ]
            chosen.append(f"κ {kappa:g}: " + " ".join(f"{v:.2f}" for v in weights.values()))
        rows.append(
            [
                site,
                str(len(pairs)),
                str(len(cold)),
                name,
                f"{ranking_metrics(overall)['ndcg@10']:.4f}",
                f"{ranking_metrics(cold)['ndcg@10']:.4f}" if cold else "-",
                f"{seconds:.1f}",
                " | ".join(chosen),
            ]
        )
    return rows


def new_user_rows(run: Path, site: str) -> list[str]:
    """A new user's ranking (no history) on validation targets: popularity, the model's prior,
    and their mix fitted on the other half."""
    data = load_platform(run / "platforms" / site, site)
    rec = load_scorer_model(run / "state" / site / "personal", device="cpu").rec
    local = training_index(data)
    targets = [data.split(u, "validation")[1] for u in range(min(data.num_users, 2 * FIT_USERS))]
    prior = rec.scores([[]], rec.encode_items(data.item_texts))[0]
    halves = [targets[0::2], targets[1::2]]

    def ndcg(weight: float, chosen: list[int]) -> float:
        scores = new_user_scores(prior, local, weight)
        return ranking_metrics(
            (scores.unsqueeze(0) >= scores[torch.as_tensor(chosen)].unsqueeze(1)).sum(1).tolist()
        )["ndcg@10"]

    fitted = [fit_new_user_blend(prior, local, fit_on) for fit_on in halves]
    mixed = (ndcg(fitted[0], halves[1]) + ndcg(fitted[1], halves[0])) / 2
    return [
        site,
        str(len(targets)),
        f"{ndcg(0.0, targets):.4f}",
        f"{ndcg(1.0, targets):.4f}",
        f"{mixed:.4f}",
        " | ".join(f"{w:.1f}" for w in fitted),
    ]


def _chosen(fit) -> tuple[dict[str, float], float]:
    return fit.weights, fit.kappa


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a `fedxrec simulate` output folder")
    parser.add_argument("--sites", default="", help="comma-separated sites (default: all)")
    args = parser.parse_args(argv)
    sites = [s for s in args.sites.split(",") if s] or sorted(
        p.name for p in (args.run / "state").iterdir() if (p / "personal").is_dir()
    )
    header = ["site", "val users", "cold", "fit", "NDCG@10 (other half)", "cold NDCG@10"]
    rows = [row for site in sites for row in site_rows(args.run, site)]
    print(format_table([[*header, "fit s", "chosen (each half)"], *rows], markdown=True))
    print("\nNew users (no history), validation NDCG@10:")
    header = ["site", "val users", "popularity", "model prior", "fitted mix", "prior's share"]
    rows = [new_user_rows(args.run, site) for site in sites]
    print(format_table([header, *rows], markdown=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
