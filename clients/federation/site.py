"""Which platform a Flower node is, and where its private data and state live.

Deployment: the SuperNode's node config names them, e.g.
``flower-supernode --node-config "platform='books' data-path='/srv/books' state-dir='/var/fedxrec'"``.
``keep-updates=true`` also keeps a copy of every adapter the site sends, on its own disk
(``state-dir/updates/RUN/round-NNN``), for the site's audit. ``reproducible-noise=true`` seeds
the DP noise from the run's public values instead of the OS's entropy: for benchmarks only (the
coordinator could then replay the noise; clients/federation/training.py says why).
Simulation: the node's ``partition-id`` indexes ``simulation.platform_names``, whose folders
``fedxrec simulate`` prepared under ``simulation.platform_root`` / ``simulation.state_root``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.config import FedxrecConfig
from shared.data import PlatformData, load_platform


class SiteConfigError(ValueError):
    """The node config does not say which platform this node is."""


@dataclass(frozen=True)
class Site:
    platform: str
    data_path: Path
    state_dir: Path
    keep_updates: bool = False
    # DP noise and sampling seeded from public values (a benchmark's sites), not OS entropy
    reproducible_noise: bool = False

    def load_data(self, cfg: FedxrecConfig) -> PlatformData:
        """The site's validated data; read again only when its files changed (one process that
        answers many messages reads a platform once)."""
        minimum = cfg.data.min_user_interactions
        key = (str(self.data_path.resolve()), self.platform, minimum, _files_state(self.data_path))
        if key not in _LOADED:
            if len(_LOADED) >= MAX_LOADED:
                _LOADED.pop(next(iter(_LOADED)))
            _LOADED[key] = load_platform(
                self.data_path, self.platform, min_user_interactions=minimum
            )
        return _LOADED[key]


MAX_LOADED = 16  # platforms one process keeps in memory
_LOADED: dict[tuple, PlatformData] = {}


def _files_state(folder: Path) -> tuple:
    """What would change if a file of the platform folder did: names, sizes, times."""
    try:
        entries = sorted(folder.iterdir()) if folder.is_dir() else []
    except OSError:
        return ()
    return tuple(
        (e.name, st.st_size, st.st_mtime_ns) for e in entries if e.is_file() for st in [e.stat()]
    )


def site_from_node_config(node_config: dict[str, Any], cfg: FedxrecConfig) -> Site:
    if "data-path" in node_config:
        data_path = Path(str(node_config["data-path"]))
        platform = str(node_config.get("platform") or data_path.name)
        if "state-dir" not in node_config:
            raise SiteConfigError(
                f"node config of platform '{platform}' has no state-dir: name a folder on this "
                "site's disk for its privacy ledger, e.g. --node-config \"... state-dir='/var/fedxrec'\""
            )
        keep = str(node_config.get("keep-updates", "false")).lower() == "true"
        reproducible = str(node_config.get("reproducible-noise", "false")).lower() == "true"
        return Site(platform, data_path, Path(str(node_config["state-dir"])), keep, reproducible)
    if "partition-id" in node_config:
        names = [n for n in cfg.simulation.platform_names.split(",") if n]
        pid = int(node_config["partition-id"])
        if not cfg.simulation.platform_root or pid >= len(names):
            raise SiteConfigError(
                f"simulated node {pid} has no platform: run simulations with `fedxrec simulate`, "
                "which prepares the platforms and sets simulation.* for the run"
            )
        name = names[pid]
        return Site(
            name,
            Path(cfg.simulation.platform_root) / name,
            Path(cfg.simulation.state_root) / name,
        )
    raise SiteConfigError(
        "this SuperNode's node config names no platform: start it with --node-config "
        "\"platform='NAME' data-path='/path/to/platform' state-dir='/path/to/state'\""
    )
