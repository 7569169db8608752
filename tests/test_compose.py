"""docker-compose.yml and the Dockerfile, checked against the project (no Docker engine here)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from simulations.data.partition import GENRE_GROUPS

ROOT = Path(__file__).resolve().parents[1]
SITES = list(GENRE_GROUPS)  # the demo platforms


def _flower_pin() -> str:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (pin,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("flwr")]
    return re.fullmatch(r"flwr(\[[^\]]*\])?==([\d.]+)", pin).group(2)


@pytest.fixture(scope="module")
def services() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def _args(service: dict) -> list[str]:
    command = service.get("command", [])
    return command if isinstance(command, list) else command.split()


def _flag(service: dict, name: str) -> str:
    values = [a.split("=", 1)[1] for a in _args(service) if a.startswith(f"{name}=")]
    assert len(values) == 1, (name, _args(service))
    return values[0]


def _mount(service: dict, target: str) -> str:
    (source,) = [v.split(":")[0] for v in service.get("volumes", []) if v.split(":")[1] == target]
    return source


def test_flower_images_are_the_pinned_version(services):
    pin = _flower_pin()
    official = [s["image"] for s in services.values() if s.get("image", "").startswith("flwr/")]
    assert sorted(i.split(":")[0] for i in official) == [
        "flwr/superlink",
        *["flwr/supernode"] * len(SITES),
    ]
    assert all(image.split(":")[1] == pin for image in official)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ARG FLWR_VERSION={pin}\n" in dockerfile
    assert re.search(r"^FROM flwr/superexec:\$\{FLWR_VERSION\}-py3\.11-", dockerfile, re.M)


def test_our_app_image_is_built_from_the_repository(services):
    app = [s for s in services.values() if s.get("image", "").startswith("fedxrec-app")]
    assert len(app) == 2 + len(SITES)  # ServerApp, key registration, one ClientApp per site
    for service in app:
        assert service["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {"certs/", "state/", "data/", ".venv/"} <= set(ignored)


def test_tls_and_node_authentication_everywhere_and_nothing_insecure(services):
    text = (ROOT / "docker-compose.yml").read_text()
    assert "--insecure" not in text and "insecure = true" not in text
    superlink = services["superlink"]
    args = _args(superlink)
    assert "--enable-supernode-auth" in args
    assert "--disable-runtime-dependency-installation" in args
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile"):
        assert _flag(superlink, flag)
    assert _mount(superlink, "/app/certificates") == "./certs/superlink"
    for name, service in services.items():
        if "--runtime-api-address" in " ".join(_args(service)):  # a SuperExec: verifies TLS
            assert _flag(service, "--root-certificates") == "certificates/ca.crt", name


def test_every_site_has_its_own_node_config_state_key_and_network(services):
    keys, states, configs = set(), set(), set()
    for site in SITES:
        node, app = services[f"supernode-{site}"], services[f"clientapp-{site}"]
        config = _flag(node, "--node-config")
        assert f"platform='{site}'" in config
        assert "data-path='/app/data'" in config and "state-dir='/app/state'" in config
        configs.add(config)
        assert _flag(node, "--auth-supernode-private-key") == "keys/node.key"
        keys.add(_mount(node, "/app/keys/node.key"))
        assert _flag(node, "--root-certificates") == "certificates/ca.crt"
        assert _flag(node, "--ssl-certfile") == "certificates/runtime.pem"
        # the ClientApp runs in its own container: the site's data and state are mounted there
        assert _flag(app, "--runtime-api-address") == f"supernode-{site}:{_flag(node, '--port')}"
        assert _mount(app, "/app/data") == f"./data/{site}"
        states.add(_mount(app, "/app/state"))
        assert app["networks"] == [f"site-{site}"]
        assert set(node["networks"]) == {"federation", f"site-{site}"}
        assert node["depends_on"]["register-sites"]["condition"] == "service_completed_successfully"
    assert keys == {f"./certs/sites/{s}/node.key" for s in SITES}
    assert len(states) == len(configs) == len(SITES)
    registered = {_mount(services["register-sites"], f"/app/keys/{s}.pub") for s in SITES}
    assert registered == {f"./certs/sites/{s}/node.pub" for s in SITES}


def test_the_coordinator_keeps_its_checkpoints_on_a_volume(services):
    assert _mount(services["serverapp"], "/app/federation") == "./state/coordinator"
    assert _mount(services["superlink"], "/app/state") == "./state/superlink"
    assert _flag(services["superlink"], "--database").startswith("state/")
