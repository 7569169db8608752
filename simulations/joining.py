"""What joining the federation gives each site: the site beside itself trained alone.

After a simulated federation, each site is trained again on its own users only, with the same
settings and the same ε (the coordinator and the ClientApp of the federation, in this process:
simulations/inprocess.py), and both are tested on the site's test split, as the model alone and
as the site's final ranking (the model fused with its own counts, weights fitted on its
validation split). Popularity and EASE on the same split are what the site could run without
any model. A reader sees per site, with its user count, what joining changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.adapter import read_adapter
from shared.config import FedxrecConfig
from shared.data import PlatformData, load_platform
from simulations.compare.evaluation import Evaluator
from simulations.inprocess import federate

Log = Callable[[str], None]
Arrays = dict[str, np.ndarray]
COLUMNS = (
    "site",
    "users",
    "Popularity",
    "EASE",
    "alone (DP)",
    "joined: federated + personalised (DP)",
    "final ranking, alone",
    "final ranking, joined",
    "joining gives",
)


@dataclass(frozen=True)
class SiteGain:
    """Test NDCG@10 of one site: baselines, the site alone and joined, model and final ranking."""

    site: str
    users: int
    popularity: float | None
    ease: float | None  # None: the comparison has no EASE figure for the site
    alone: float
    joined: float
    alone_final: float
    joined_final: float

    @property
    def gain(self) -> float:
        """The final ranking joined over the final ranking alone (1 = nothing gained)."""
        return self.joined_final / self.alone_final if self.alone_final else float("inf")

    def row(self) -> list[str]:
        def cell(value: float | None) -> str:
            return "—" if value is None else f"{value:.4f}"

        return [
            self.site,
            str(self.users),
            cell(self.popularity),
            cell(self.ease),
            cell(self.alone),
            cell(self.joined),
            cell(self.alone_final),
            cell(self.joined_final),
            f"{self.gain:.2f}×",
        ]


def joined_adapter(out: Path, site: str) -> Arrays:
    """What a simulated site ranks with after the federation in ``out``: its personal model,
    else the global one."""
    personal = out / "state" / site / "personal"
    return read_adapter(personal if personal.is_dir() else out / "adapter")


def site_gains(
    cfg: FedxrecConfig,
    sites: dict[str, Path],
    joined: dict[str, Arrays],
    work: Path,
    baselines: dict[str, dict[str, dict[str, float]]],
    log: Log = print,
) -> list[SiteGain]:
    """Train each site of ``sites`` (name → data folder) alone, under ``work/NAME``, and test it
    beside ``joined`` (name → what the site ranks with after the federation); ``baselines``:
    method → site → test metrics, as ``fedxrec simulate`` measured them."""
    platforms = [
        load_platform(folder, name, min_user_interactions=cfg.data.min_user_interactions)
        for name, folder in sites.items()
    ]
    evaluator = Evaluator(cfg, platforms, cfg.federation.eval_users)
    # alone: a federation of one, started afresh (secure aggregation needs two sites)
    alone_cfg = cfg.with_overrides(
        {
            "federation.resume": False,
            "federation.min_nodes": 0,
            "federation.secure_aggregation": False,
        }
    )
    gains = []
    for run_id, data in enumerate(platforms, start=1):
        log(f"fedxrec simulate: {data.name} ({data.num_users} users) trains alone, same ε")
        run = federate(
            {data.name: sites[data.name]},
            alone_cfg,
            work / data.name,
            run_id=run_id,
            on_line=lambda line: None,
        )
        own = run.personal_adapters().get(data.name, run.global_adapter())
        alone = evaluator.test(own, [data], hybrid=True)
        together = evaluator.test(joined[data.name], [data], hybrid=True)
        gains.append(
            SiteGain(
                site=data.name,
                users=data.num_users,
                popularity=baselines["popularity"][data.name]["ndcg@10"],
                ease=baselines.get("ease", {}).get(data.name, {}).get("ndcg@10"),
                alone=_ndcg(alone.test, data),
                joined=_ndcg(together.test, data),
                alone_final=_ndcg(alone.hybrid_test, data),
                joined_final=_ndcg(together.hybrid_test, data),
            )
        )
    return gains


def _ndcg(metrics: dict, data: PlatformData) -> float:
    return float(metrics[data.name]["all"]["ndcg@10"])


def gains_rows(gains: list[SiteGain]) -> list[list[str]]:
    return [list(COLUMNS), *(g.row() for g in gains)]
