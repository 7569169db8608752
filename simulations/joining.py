"""What joining the federation gives each site: the site beside itself trained alone.

After a simulated federation, each site is trained again on its own users only, with the same
settings and the same ε (the coordinator and the ClientApp of the federation, in process:
simulations/inprocess.py; one process per core, a site each, largest first), and both are
tested on the site's test split, as the model alone and as the site's final ranking (the model
fused with its own counts, weights fitted on its validation split). Popularity and EASE on the
same split are what the site could run without any model. A reader sees per site, with its user
count, what joining changed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
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
    workers: int | None = None,
) -> list[SiteGain]:
    """Train each site of ``sites`` (name → data folder) alone, under ``work/NAME``, and test it
    beside ``joined`` (name → what the site ranks with after the federation); ``baselines``:
    method → site → test metrics, as ``fedxrec simulate`` measured them. ``workers`` processes
    (default: one per core) train the sites, each with an equal share of the cores."""
    platforms = [
        load_platform(folder, name, min_user_interactions=cfg.data.min_user_interactions)
        for name, folder in sites.items()
    ]
    cores = os.cpu_count() or 1
    workers = max(1, min(workers or cores, len(platforms)))
    jobs = sorted(enumerate(platforms, start=1), key=lambda job: -job[1].num_users)
    args = [
        (cfg, run_id, data, sites[data.name], joined[data.name], work, baselines)
        for run_id, data in jobs
    ]
    for _, data in jobs:
        log(f"fedxrec simulate: {data.name} ({data.num_users} users) trains alone, same ε")
    if workers == 1:
        gains = [_site_gain(*a) for a in args]
    else:
        with ProcessPoolExecutor(
            workers,
            mp_context=get_context("spawn"),
            initializer=_worker_start,
            initargs=(max(1, cores // workers),),
        ) as pool:
            gains = list(pool.map(_site_gain, *zip(*args, strict=True)))
    order = {data.name: k for k, data in enumerate(platforms)}
    return sorted(gains, key=lambda g: order[g.site])


def _worker_start(threads: int) -> None:
    """A process that trains a site alone: fedxrec's process settings, its share of the cores."""
    import torch

    from shared.process import keep_freed_memory, set_process_defaults

    set_process_defaults()
    keep_freed_memory()
    torch.set_num_threads(threads)


def _site_gain(
    cfg: FedxrecConfig,
    run_id: int,
    data: PlatformData,
    folder: Path,
    joined: Arrays,
    work: Path,
    baselines: dict[str, dict[str, dict[str, float]]],
) -> SiteGain:
    """One site trained alone (a federation of one, started afresh: secure aggregation needs
    two sites), tested beside what it ranks with joined."""
    alone_cfg = cfg.with_overrides(
        {
            "federation.resume": False,
            "federation.min_nodes": 0,
            "federation.secure_aggregation": False,
        }
    )
    run = federate(
        {data.name: folder}, alone_cfg, work / data.name, run_id=run_id, on_line=lambda line: None
    )
    evaluator = Evaluator(cfg, [data], cfg.federation.eval_users)
    own = run.personal_adapters().get(data.name, run.global_adapter())
    alone = evaluator.test(own, [data], hybrid=True)
    together = evaluator.test(joined, [data], hybrid=True)
    return SiteGain(
        site=data.name,
        users=data.num_users,
        popularity=baselines["popularity"][data.name]["ndcg@10"],
        ease=baselines.get("ease", {}).get(data.name, {}).get("ndcg@10"),
        alone=_ndcg(alone.test, data),
        joined=_ndcg(together.test, data),
        alone_final=_ndcg(alone.hybrid_test, data),
        joined_final=_ndcg(together.hybrid_test, data),
    )


def _ndcg(metrics: dict, data: PlatformData) -> float:
    return float(metrics[data.name]["all"]["ndcg@10"])


def gains_rows(gains: list[SiteGain]) -> list[list[str]]:
    return [list(COLUMNS), *(g.row() for g in gains)]
