"""The Deployment Engine end to end: SuperLinks and SuperNodes on 127.0.0.1, TLS and node auth on.

Five federations on five SuperLinks, two at a time, each stopped by PID as soon as it is done.
A deployment round alternates waiting (Flower polls every 3 s) with work (every message starts a
ClientApp process that imports torch, transformers, peft and Opacus: 6-12 CPU s), so two scenarios
keep two cores busy; five at once had fifteen SuperNodes fighting over them. The scenarios:
- "plain": 2 rounds of plain FedAvg, while a SuperNode with an unregistered key is refused;
- "resume": the coordinator is killed after round 1 and resumed (a site restarts meanwhile),
  then the sites personalise (the other scenarios skip it: a ClientApp process per site);
- "secagg": 2 rounds under SecAgg+, sites keeping a copy of what they sent (on their own disk);
- "dropout": 3 sites with a minimum of 2; one is killed (SIGKILL) in the middle of round 1;
- "secagg-dropout": the same under SecAgg+ (3 shares, threshold 2): the killed site's masks are
  reconstructed from the others' shares and the aggregate is the survivors' FedAvg.
The last test asserts that no process is left. No wait has a fixed time limit: each fails when
nothing in its federation (logs, files, processes) progressed for ``PATIENCE.stall`` seconds,
naming every process, what it was waiting for and the last lines of its log.
"""

from __future__ import annotations

import json
import os
import signal
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.aggregation import secagg_tolerance
from server.checkpoint import Checkpoint
from server.run_log import FederationLog
from shared.adapter import adapter_hash, read_adapter, read_adapter_metadata
from simulations.launch.deployment import LocalSuperNode
from simulations.launch.progress import Patience, WaitError
from simulations.launch.superlink import TAG_VARIABLE, LocalSuperLink, descendants

from .conftest import DeployKit

pytestmark = pytest.mark.integration

APP_DIR = Path(__file__).resolve().parents[2]
PATIENCE = Patience(stall=180.0, cap=1800.0)  # each wait: 3 min without progress, 30 min in all
AT_ONCE = 2  # scenarios running side by side
PERSONALIZE = {"train.personalize_steps": 2}  # the sites personalise after the last round


def _link(kit: DeployKit, name: str, links: list[LocalSuperLink]) -> LocalSuperLink:
    link = LocalSuperLink(
        kit.root / name / "flwr", simulation=False, certs=kit.certs / "superlink", node_auth=True
    )
    links.append(link)
    link.start()
    return link


def _site(kit: DeployKit, link: LocalSuperLink, site: str, chain: str, **kw) -> LocalSuperNode:
    return LocalSuperNode(
        link,
        site,
        data_path=kit.platforms / site,
        state_dir=kit.root / chain / "state" / site,
        private_key=kit.site_key(site),
        **kw,
    ).start()


def _watching(out: Path) -> dict[str, Any]:
    """A run's waits: its output folder counts as progress, the scenarios' patience applies."""
    return {"folders": [out], "patience": PATIENCE}


def _wait_for_checkpoint(link: LocalSuperLink, out: Path, server_round: int) -> None:
    def written() -> bool:
        try:
            return Checkpoint.read(out).round >= server_round
        except ValueError:  # none yet, or being written
            return False

    what = f"the coordinator to checkpoint round {server_round} in {out}"
    link.wait_until(what, written, folders=[out], patience=PATIENCE)


def _kill_serverapps(link: LocalSuperLink) -> int:
    """SIGKILL the coordinator: every ServerApp process the SuperLink started."""
    assert link.process is not None
    killed = 0
    for pid in descendants(link.process.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"flwr-serverapp" in cmdline:
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed


# ---- the three chains ---------------------------------------------------------------------------


def plain_chain(kit: DeployKit, links: list[LocalSuperLink]) -> dict[str, Any]:
    link = _link(kit, "plain", links)
    for site in ("action", "comedy"):
        link.register_supernode(kit.site_pub(site))
        _site(kit, link, site, "plain")
    rogue = LocalSuperNode(
        link,
        "rogue",
        data_path=kit.platforms / "action",
        state_dir=kit.root / "plain" / "state" / "rogue",
        private_key=kit.site_key("rogue"),  # a valid key pair, never registered
    ).start()
    cfg, rc = kit.run_config("plain", {})
    out = Path(cfg.federation.out_dir)
    run_id = link.run_app(APP_DIR, run_config=rc, on_line=lambda line: None, **_watching(out))
    try:
        rogue_exit: int | str = rogue.wait_for_exit()
    except WaitError as err:  # its test fails with this
        rogue_exit = str(err)
    return {
        "run_id": run_id,
        "out": out,
        "rogue_exit": rogue_exit,
        "rogue_log": rogue.log(),
        "known_nodes": link.supernodes(),
    }


def resume_chain(kit: DeployKit, links: list[LocalSuperLink]) -> dict[str, Any]:
    link = _link(kit, "resume", links)
    sites = {}
    for site in ("action", "comedy"):
        link.register_supernode(kit.site_pub(site))
        sites[site] = _site(kit, link, site, "resume")
    cfg, first_rc = kit.run_config("resume", PERSONALIZE)
    out = Path(cfg.federation.out_dir)
    link.start_run(APP_DIR, run_config=first_rc)
    _wait_for_checkpoint(link, out, 1)
    killed = _kill_serverapps(link)
    round1 = adapter_hash(read_adapter(out / "rounds" / "round-001"))
    sites["comedy"].stop()  # a site restarts too, with the same key and state folder
    sites["comedy"] = _site(
        kit, link, "comedy", "resume", log_path=kit.root / "resume" / "comedy-restarted.log"
    )
    _, resume_rc = kit.run_config("resume", {**PERSONALIZE, "federation.resume": True})
    resumed_run = link.run_app(
        APP_DIR, run_config=resume_rc, on_line=lambda line: None, **_watching(out)
    )
    return {
        "out": out,
        "killed": killed,
        "round1_hash_before": round1,
        "resumed_run": resumed_run,
        "ledger": kit.root / "resume" / "state" / "comedy" / "privacy_ledger.json",
    }


def secagg_chain(kit: DeployKit, links: list[LocalSuperLink]) -> dict[str, Any]:
    link = _link(kit, "secagg", links)
    for site in ("action", "comedy"):
        link.register_supernode(kit.site_pub(site))
        _site(kit, link, site, "secagg", keep_updates=True)
    cfg, rc = kit.run_config("secagg", {"federation.secure_aggregation": True})
    out = Path(cfg.federation.out_dir)
    lines: list[str] = []
    run_id = link.run_app(APP_DIR, run_config=rc, on_line=lines.append, **_watching(out))
    return {
        "cfg": cfg,
        "run_id": run_id,
        "out": out,
        "coordinator_log": "".join(lines) + link.log_path.read_text(errors="replace"),
        "updates": kit.root / "secagg" / "state",
    }


def _three_sites_one_killed(
    kit: DeployKit,
    links: list[LocalSuperLink],
    name: str,
    settings: dict[str, Any],
    kill_when: str,
    keep_updates: bool = False,
) -> dict[str, Any]:
    """A 1-round federation of three sites (two replies suffice) where drama is killed as soon as
    its log shows ``kill_when``. The round does not wait out its timeout for drama: the SuperLink
    answers for a node that stopped sending heartbeats (within a minute)."""
    link = _link(kit, name, links)
    sites = {}
    for site in ("action", "comedy", "drama"):
        link.register_supernode(kit.site_pub(site))
        sites[site] = _site(kit, link, site, name, keep_updates=keep_updates)
    cfg, rc = kit.run_config(
        name,
        {
            **settings,
            "federation.platforms": 3,
            "federation.min_nodes": 2,
            "federation.rounds": 1,
        },
    )
    out = Path(cfg.federation.out_dir)
    started = time.perf_counter()
    run_id = link.start_run(APP_DIR, run_config=rc)
    sites["drama"].wait_for_log(kill_when, patience=PATIENCE)
    sites["drama"].kill()
    killed_at = time.perf_counter() - started
    status = link.wait_for_run(run_id, **_watching(out))
    return {
        "cfg": cfg,
        "status": status,
        "killed_at": killed_at,
        "out": out,
        "updates": kit.root / name / "state",
    }


def dropout_chain(kit: DeployKit, links: list[LocalSuperLink]) -> dict[str, Any]:
    # The round's train message has reached the site: its ClientApp is starting. Kill the site.
    return _three_sites_one_killed(kit, links, "dropout", {}, kill_when="Receiving: train message")


def secagg_dropout_chain(kit: DeployKit, links: list[LocalSuperLink]) -> dict[str, Any]:
    # drama has shared its key shares and is training (SecAgg+'s masked-vector stage): kill it
    secagg = {
        "federation.secure_aggregation": True,
        "federation.secagg_shares": 3,
        "federation.secagg_threshold": 2,
    }
    return _three_sites_one_killed(
        kit,
        links,
        "secagg-dropout",
        secagg,
        kill_when="drama: training round 1",
        keep_updates=True,
    )


# Longest first, so that the last one to start is a short one.
CHAINS: dict[str, Callable[[DeployKit, list[LocalSuperLink]], dict[str, Any]]] = {
    "resume": resume_chain,
    "secagg": secagg_chain,
    "secagg-dropout": secagg_dropout_chain,
    "plain": plain_chain,
    "dropout": dropout_chain,
}


def _scenario(
    chain: Callable, kit: DeployKit, survivors: set[int], tags: list[str]
) -> dict[str, Any] | str:
    """Run one scenario and stop every process it started (by PID) as soon as it is done; its
    result, or the traceback its tests fail with."""
    links: list[LocalSuperLink] = []
    started = time.perf_counter()
    try:
        result: dict[str, Any] | str = chain(kit, links)
    except Exception:  # the chain's tests fail with this; the others still run
        result = traceback.format_exc()
    finally:
        for link in links:
            survivors |= link.stop()
            tags.append(link.tag)
    if isinstance(result, dict):
        result["seconds"] = time.perf_counter() - started
    return result


@pytest.fixture(scope="module")
def deployment(deploy_kit):
    survivors: set[int] = set()
    tags: list[str] = []
    started = time.perf_counter()
    with ThreadPoolExecutor(AT_ONCE) as pool:
        futures = {
            name: pool.submit(_scenario, chain, deploy_kit, survivors, tags)
            for name, chain in CHAINS.items()
        }
        results: dict[str, Any] = {name: future.result() for name, future in futures.items()}
    results["survivors"] = survivors
    results["tags"] = tags
    shown = [
        f"{name} {results[name]['seconds']:.0f}s"
        if isinstance(results[name], dict)
        else f"{name} failed"  # its tests say why
        for name in CHAINS
    ]
    print(
        f"\ndeployment: {time.perf_counter() - started:.0f}s wall, {AT_ONCE} scenarios at a time "
        f"({', '.join(shown)})"
    )
    return results


def _get(results: dict[str, Any], chain: str) -> dict[str, Any]:
    value = results[chain]
    if isinstance(value, str):
        pytest.fail(f"the {chain} scenario failed:\n{value}")
    return value


# ---- TLS + node authentication -----------------------------------------------------------------


def test_two_sites_with_tls_and_node_auth_train_two_rounds(deployment):
    plain = _get(deployment, "plain")
    log = FederationLog.read(plain["out"])
    assert log.completed_rounds == 2 and [r["round"] for r in log.rounds] == [0, 1, 2]
    assert set(log.rounds[2]["platforms"]) == {"action", "comedy"}
    assert set(log.final["federated"]) == {"action", "comedy"}
    initial = read_adapter(plain["out"] / "rounds" / "round-000")
    final = read_adapter(plain["out"] / "adapter")
    assert any(not np.allclose(initial[k], final[k]) for k in final)
    # plain FedAvg sees the adapters: it reports what each site sent
    assert all(m["bytes_up"] > 0 for m in log.rounds[1]["platforms"].values())


def test_a_supernode_with_an_unregistered_key_is_refused(deployment):
    plain = _get(deployment, "plain")
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
