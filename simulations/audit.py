"""`fedxrec audit`: an empirical privacy audit, a membership-inference attack on trained models.

Each platform's users are split at random in two halves: members, who train, and non-members,
held out of training on purpose (the same distribution). The federation (the product's settings)
trains on the members only, once with DP at privacy.epsilon and once without DP. The attacker
scores every user by the model's loss on that user's training history (a lower loss: more likely
a member) and is measured by the AUC of telling members from non-members and its true-positive
rate at a 1 % and a 0.1 % false-positive rate, with 95 % bootstrap intervals, for the global model
(what leaves each site) and each site's personalised model (what stays on it). Beside them: the
largest TPR at each FPR that (ε, δ)-DP allows any attack, TPR ≤ min(e^ε·FPR + δ,
1 − e^−ε·(1 − δ − FPR)) (Kairouz et al. 2015). Writes audit.json and audit.md to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clients.federation.examples import build_batch, trainable_users
from clients.federation.training import user_losses
from shared.adapter import set_adapter_arrays
from shared.config import FedxrecConfig, default_delta
from shared.config_files import add_config_arguments, parse_overrides
from shared.data import PlatformData
from shared.model import Recommender, pick_device, process_recommender
from simulations.compare.data import load_platforms
from simulations.data.partition import add_data_arguments, data_overrides
from simulations.inprocess import federate, write_platform_data
from simulations.report import code_commit, format_table

FPRS = (0.01, 0.001)
BOOTSTRAP = 500


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit",
        help="membership-inference audit of the DP model and the same training without DP",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (audit.json, audit.md)")
    add_data_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="the member / non-member split's seed")
    add_config_arguments(p, "federation.rounds=5")
    p.set_defaults(run=run)


def split_members(data: PlatformData, seed: int) -> tuple[PlatformData, list[int]]:
    """(the platform restricted to its members, the non-members' user indices)."""
    users = trainable_users(data)
    random.Random(f"{seed}:{data.name}").shuffle(users)
    members = sorted(users[: len(users) // 2])
    others = sorted(users[len(users) // 2 :])
    subset = PlatformData(
        name=data.name,
        items=data.items,
        users=[data.users[u] for u in members],
        sequences=[data.sequences[u] for u in members],
        times=[data.times[u] for u in members] if data.times else None,
    )
    return subset, others


@torch.no_grad()
def user_scores(rec: Recommender, data: PlatformData, users: list[int]) -> np.ndarray:
    """The attack's score of each user: minus the model's mean loss over their training history
    (every slot of the window the model trains on)."""
    vectors = rec.catalogue_text_vectors(data.item_texts)
    scores = []
    for start in range(0, len(users), 256):
        batch = build_batch(data, users[start : start + 256], window=rec.config.history_items).to(
            rec.device
        )
        scores.append(-user_losses(rec, data, batch, vectors).cpu().numpy())
    return np.concatenate(scores) if scores else np.zeros(0)


def attack_metrics(members: np.ndarray, others: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """AUC and TPR at fixed FPRs of scoring members above non-members, with 95 % intervals."""

    def measure(m: np.ndarray, o: np.ndarray) -> dict[str, float]:
        both = np.concatenate([m, o])
        ranks = both.argsort().argsort() + 1.0
        auc = (ranks[: len(m)].sum() - len(m) * (len(m) + 1) / 2) / (len(m) * len(o))
        out = {"auc": float(auc)}
        for fpr in FPRS:
            threshold = np.quantile(o, 1 - fpr, method="higher")
            out[f"tpr@{fpr:g}"] = float((m > threshold).mean())
        return out

    point = measure(members, others)
    rng = np.random.default_rng(seed)
    samples = [
        measure(rng.choice(members, len(members)), rng.choice(others, len(others)))
        for _ in range(BOOTSTRAP)
    ]
    return {
        key: {
            "value": value,
            "low": float(np.quantile([s[key] for s in samples], 0.025)),
            "high": float(np.quantile([s[key] for s in samples], 0.975)),
        }
        for key, value in point.items()
    }


def dp_tpr_bound(epsilon: float, delta: float, fpr: float) -> float:
    """The largest TPR any test can reach at ``fpr`` against an (ε, δ)-DP mechanism."""
    if not math.isfinite(epsilon):
        return 1.0
    return min(1.0, math.exp(epsilon) * fpr + delta, 1 - math.exp(-epsilon) * (1 - delta - fpr))


def run(args: argparse.Namespace) -> int:
    started, commit = (
        time.perf_counter(),
        code_commit(),
    )  # the code that runs, whatever HEAD becomes
    cfg = FedxrecConfig.load(args.config)
    cfg = cfg.with_overrides(parse_overrides(args.set))
    cfg = cfg.with_overrides(data_overrides(args))
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    platforms = load_platforms(cfg, out / "platforms")
    split = [split_members(p, args.seed) for p in platforms]
    members = [m for m, _ in split]
    device = pick_device(cfg.train.device)
    results: dict[str, Any] = {
        "dataset": cfg.data.dataset,
        "seed": args.seed,
        "platforms": {
            p.name: {"members": m.num_users, "non_members": len(o)}
            for p, (m, o) in zip(platforms, split, strict=True)
        },
        "config": cfg.to_flat(),
        "models": {},
    }
    # The members train in a federation of the product's coordinator and sites; their data is
    # written as the sites' folders.
    folders = {m.name: write_platform_data(m, out / "members" / m.name) for m in members}
    for mode, dp in (("dp", True), ("no_dp", False)):
        mode_cfg = cfg.with_overrides({"privacy.enabled": dp})
        print(
            f"fedxrec audit: training on the members, {'DP ε ' + str(cfg.privacy.epsilon) if dp else 'no DP'}",
            flush=True,
        )
        with tempfile.TemporaryDirectory(dir=out, prefix=f".audit-{mode}-") as tmp:
            run = federate(folders, mode_cfg, Path(tmp), on_line=lambda line: None)
            global_arrays, personal = run.global_adapter(), run.personal_adapters()
        rec = process_recommender(mode_cfg.model, device=device)
        for model, arrays_of in (
            ("global", lambda name, g=global_arrays: g),
            ("personalized", lambda name, p=personal, g=global_arrays: p.get(name, g)),
        ):
            inside, outside = [], []
            for data, (subset, others) in zip(platforms, split, strict=True):
                set_adapter_arrays(rec, arrays_of(data.name))
                inside.append(user_scores(rec, subset, list(range(subset.num_users))))
                outside.append(user_scores(rec, data, others))
            results["models"][f"{mode}/{model}"] = attack_metrics(
                np.concatenate(inside), np.concatenate(outside), args.seed
            )
    delta = default_delta(min(m.num_users for m in members))
    results["bound"] = {
        "epsilon": cfg.privacy.epsilon,
        "delta": delta,
        **{f"tpr@{fpr:g}": dp_tpr_bound(cfg.privacy.epsilon, delta, fpr) for fpr in FPRS},
    }
    results["seconds"] = time.perf_counter() - started
    results["commit"], results["created"] = commit, time.strftime("%Y-%m-%dT%H:%M:%S%z")
    (out / "audit.json").write_text(json.dumps(results, indent=1))
    (out / "audit.md").write_text(render(results))
    print(render(results))
    return 0


def _cell(stat: dict[str, float]) -> str:
    return f"{stat['value']:.3f} [{stat['low']:.3f}, {stat['high']:.3f}]"


def render(results: dict[str, Any]) -> str:
    bound = results["bound"]
    rows = [["model", "AUC", *[f"TPR @ FPR {fpr:g}" for fpr in FPRS]]]
    for name, stats in results["models"].items():
        rows.append([name, _cell(stats["auc"]), *[_cell(stats[f"tpr@{fpr:g}"]) for fpr in FPRS]])
    rows.append(
        [
            f"(ε={bound['epsilon']:g}, δ={bound['delta']:.1e})-DP bound",
            "—",
            *[f"{bound[f'tpr@{fpr:g}']:.3f}" for fpr in FPRS],
        ]
    )
    members = sum(p["members"] for p in results["platforms"].values())
    others = sum(p["non_members"] for p in results["platforms"].values())
    return "\n".join(
        [
            "# fedxrec privacy audit (membership inference by per-user loss)",
            "",
            f"- Data set: {results['dataset']}; {members} members and {others} non-members over "
            f"{len(results['platforms'])} platforms (split seed {results['seed']}); 95 % "
            f"bootstrap intervals over {BOOTSTRAP} resamples.",
            "- AUC 0.5 is a coin flip; a TPR at FPR α close to α means the attack learns nothing.",
            "",
            format_table(rows, markdown=True),
            "",
        ]
    )
