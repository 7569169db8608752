"""The Deployment Engine end to end: SuperLinks and SuperNodes on 127.0.0.1, TLS and node auth on.

The scenarios (and how they are run: two at a time, waits bounded by progress) are in conftest.py;
each test reads the results of one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.aggregation import secagg_tolerance
from server.checkpoint import Checkpoint
from server.run_log import FederationLog
from shared.adapter import adapter_hash, read_adapter, read_adapter_metadata
from simulations.launch.processes import TAG_VARIABLE

pytestmark = pytest.mark.integration


def _get(results: dict[str, Any], chain: str) -> dict[str, Any]:
    value = results[chain]
    if isinstance(value, str):
        pytest.fail(f"the {chain} scenario failed:\n{value}")
    return value


# ---- TLS + node authentication -----------------------------------------------------------------


def test_two_sites_with_tls_and_node_auth_train_two_rounds(deployment):
    # the resume scenario's federation: plain FedAvg, its two rounds in two runs
    plain = _get(deployment, "resume")
    log = FederationLog.read(plain["out"])
    assert log.completed_rounds == 2 and [r["round"] for r in log.rounds] == [0, 1, 2]
    assert set(log.rounds[2]["platforms"]) == {"action", "comedy"}
    assert set(log.final["federated"]) == {"action", "comedy"}
    initial = read_adapter(plain["out"] / "rounds" / "round-000")
    final = read_adapter(plain["out"] / "adapter")
    assert any(not np.allclose(initial[k], final[k]) for k in final)
    # plain FedAvg sees the adapters: it reports what each site sent
    for entry in log.rounds[1:]:
        assert all(m["bytes_up"] > 0 for m in entry["platforms"].values())


def test_a_supernode_with_an_unregistered_key_is_refused(deployment):
    plain = _get(deployment, "resume")
    assert plain["rogue_exit"] == 1
    assert "Failed to activate SuperNode" in plain["rogue_log"]
    assert len(plain["known_nodes"]) == 2  # the two registered sites only


# ---- secure aggregation ------------------------------------------------------------------------


def _assert_secure_fedavg(run: dict[str, Any], server_round: int, sites: list[str]) -> None:
    """The round's global adapter is the users-weighted FedAvg of what ``sites`` sent, within
    SecAgg+'s quantisation tolerance, and far from each site's own."""
    fed = run["cfg"].federation
    checkpoint = Checkpoint.read(run["out"])
    updates = []
    for site in sites:
        (run_dir,) = (run["updates"] / site / "updates").iterdir()
        folder = run_dir / f"round-{server_round:03d}"
        updates.append((read_adapter_metadata(folder)["users"], read_adapter(folder)))
    users = sum(w for w, _ in updates)
    expected = {
        k: sum(w * a[k].astype(np.float64) for w, a in updates) / users for k in updates[0][1]
    }
    got = read_adapter(run["out"] / "rounds" / f"round-{server_round:03d}")
    error = max(float(np.abs(got[k] - expected[k]).max()) for k in got)
    max_weight = checkpoint.strategy["secagg"]["max_weight"]
    tolerance = secagg_tolerance(fed, len(updates), max_weight, users) + 1e-7  # + float32
    assert 0 < error <= tolerance, (server_round, error, tolerance)
    for _, update in updates:
        assert max(float(np.abs(got[k] - update[k]).max()) for k in got) > 100 * tolerance


def test_secure_aggregate_equals_fedavg_of_the_sites_updates(deployment):
    run = _get(deployment, "secagg")
    checkpoint = Checkpoint.read(run["out"])
    assert checkpoint.round == 2 and checkpoint.strategy["name"] == "secagg+fedavg"
    for server_round in (1, 2):
        _assert_secure_fedavg(run, server_round, ["action", "comedy"])


def test_a_site_dropping_out_of_secure_aggregation_leaves_the_survivors_fedavg(deployment):
    run = _get(deployment, "secagg-dropout")
    assert run["status"] == "finished:completed"
    log = FederationLog.read(run["out"])
    assert set(log.rounds[1]["platforms"]) >= {"action", "comedy"}
    assert "loss" not in log.rounds[1]["platforms"].get("drama", {})
    assert Checkpoint.read(run["out"]).round == 1
    _assert_secure_fedavg(run, 1, ["action", "comedy"])


def test_secure_aggregation_never_writes_or_logs_a_site_adapter(deployment):
    run = _get(deployment, "secagg")
    site_hashes = {
        adapter_hash(read_adapter(folder)) for folder in run["updates"].glob("*/updates/*/round-*")
    }
    assert len(site_hashes) == 4
    # every adapter the coordinator wrote: the global ones only
    written = [p.parent for p in run["out"].rglob("adapter_model.safetensors")]
    assert {p.name for p in written} == {"adapter", "round-000", "round-001", "round-002"}
    assert not site_hashes & {adapter_hash(read_adapter(p)) for p in written}
    assert not any(h in run["coordinator_log"] for h in site_hashes)
    log = FederationLog.read(run["out"])
    for entry in log.rounds[1:]:
        assert set(entry["platforms"]) == {"action", "comedy"}  # per-site metrics are fine
        assert all("bytes_up" not in m for m in entry["platforms"].values())


# ---- nothing lost --------------------------------------------------------------------------------


def test_killed_coordinator_resumes_without_losing_or_repeating_a_round(deployment):
    resume = _get(deployment, "resume")
    out = resume["out"]
    assert resume["killed"] >= 1
    checkpoint = Checkpoint.read(out)
    assert checkpoint.round == 2 and len(checkpoint.run_ids) == 2
    log = FederationLog.read(out)
    assert [r["round"] for r in log.rounds] == [0, 1, 2]
    assert log.resumed == [{"run_id": str(resume["resumed_run"]), "from_round": 2}]
    assert set(log.final["federated"]) == {"action", "comedy"}
    # round 1 is the killed run's, untouched; round 2 started from it
    assert adapter_hash(read_adapter(out / "rounds" / "round-001")) == resume["round1_hash_before"]
    assert adapter_hash(read_adapter(out / "adapter")) == checkpoint.adapter_hash
    assert read_adapter_metadata(out / "rounds" / "round-002")["run_id"] == str(
        resume["resumed_run"]
    )
    # the restarted site kept its ledger: the resumed round adds to what it had spent
    releases = json.loads(resume["ledger"].read_text())["releases"]
    spent = [r["epsilon_after"] for r in releases]
    assert {r["run_id"] for r in releases} == set(checkpoint.run_ids)  # killed run, resumed run
    assert spent == sorted(spent) and len(set(spent)) == len(spent)
    round2 = [r["epsilon_after"] for r in releases if r["server_round"] == 2]
    assert log.rounds[2]["platforms"]["comedy"]["epsilon"] == round2[-1]
    assert log.personalization["comedy"]["epsilon"] == spent[-1]  # then its personalisation


def test_a_site_killed_mid_round_does_not_stop_the_round(deployment):
    run = _get(deployment, "dropout")
    assert run["status"] == "finished:completed"
    log = FederationLog.read(run["out"])
    trained = {name for name, m in log.rounds[1]["platforms"].items() if "loss" in m}
    assert trained == {"action", "comedy"}
    assert set(log.platforms) == {"action", "comedy", "drama"}
    assert set(log.final["federated"]) == {"action", "comedy"}
    assert Checkpoint.read(run["out"]).round == 1
    initial = read_adapter(run["out"] / "rounds" / "round-000")
    final = read_adapter(run["out"] / "rounds" / "round-001")
    assert any(not np.allclose(initial[k], final[k]) for k in final)


def test_every_process_is_stopped(deployment):
    assert deployment["survivors"] == set()
    needles = {f"{TAG_VARIABLE}={tag}".encode() for tag in deployment["tags"]}
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if environ & needles:
            left.append(pid)
    assert left == []
