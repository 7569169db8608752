from pathlib import Path

import pytest

from clients.federation.site import SiteConfigError, site_from_node_config
from shared.config import FedxrecConfig


def test_deployment_node_config_names_the_site():
    site = site_from_node_config(
        {"platform": "books", "data-path": "/srv/books", "state-dir": "/var/fx"}, FedxrecConfig()
    )
    assert (site.platform, site.data_path, site.state_dir) == (
        "books",
        Path("/srv/books"),
        Path("/var/fx"),
    )


def test_simulated_node_is_its_partition():
    cfg = FedxrecConfig.from_flat(
        {
            "simulation.platform_root": "/p",
            "simulation.state_root": "/s",
            "simulation.platform_names": "action,comedy",
        }
    )
    site = site_from_node_config({"partition-id": 1, "num-partitions": 2}, cfg)
    assert (site.platform, site.data_path, site.state_dir) == (
        "comedy",
        Path("/p/comedy"),
        Path("/s/comedy"),
    )


@pytest.mark.parametrize(
    ("node_config", "message"),
    [
        ({}, "names no platform"),
        ({"data-path": "/srv/books"}, "has no state-dir"),
        ({"partition-id": 3}, "fedxrec simulate"),
    ],
)
def test_incomplete_node_config_says_what_to_add(node_config, message):
    with pytest.raises(SiteConfigError, match=message):
        site_from_node_config(node_config, FedxrecConfig())
