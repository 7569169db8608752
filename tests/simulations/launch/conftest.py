"""What the deployment scenarios share: keys, platforms, a small local encoder, and the scenarios.

The scenarios test the Deployment Engine's plumbing (TLS, node authentication, SecAgg+,
checkpoints, dropouts), not ranking quality, so the sites load a tiny random BERT saved as a
local Hugging Face folder (``model.encoder`` = its path): every ClientApp process still imports
torch, transformers, peft and Opacus and runs DP-SGD, but computes next to nothing.

Four federations on four SuperLinks, two at a time, each stopped by PID as soon as it is done.
A deployment round alternates waiting (Flower polls every 3 s) with work (every message starts a
ClientApp process that imports torch, transformers, peft and Opacus: 6-12 CPU s), so two scenarios
keep two cores busy; five at once had fifteen SuperNodes fighting over them. Every ClientApp
process costs seconds of CPU, so each scenario checks as much as it can. The scenarios:
- "resume": 2 rounds of plain FedAvg while a SuperNode with an unregistered key is refused; the
  coordinator is killed after round 1 and resumed (a site restarts meanwhile), then the sites
  personalise (the other scenarios skip it: a ClientApp process per site);
- "secagg": 2 rounds under SecAgg+, sites keeping a copy of what they sent (on their own disk);
- "dropout": 3 sites with a minimum of 2; one is killed (SIGKILL) in the middle of round 1;
- "secagg-dropout": the same under SecAgg+ (3 shares, threshold 2): the killed site's masks are
  reconstructed from the others' shares and the aggregate is the survivors' FedAvg.
test_deployment's last test asserts that no process is left. No wait has a fixed time limit:
each fails when nothing in its federation (logs, files, processes) progressed for
``PATIENCE.stall`` seconds, naming every process, what it was waiting for and the last lines of
its log.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from server.certs import init_certs
from server.checkpoint import Checkpoint
from shared.adapter import adapter_hash, read_adapter
from shared.config import FedxrecConfig
from simulations.data.partition import prepare_platforms
from simulations.launch.deployment import LocalSuperNode
from simulations.launch.progress import Patience, WaitError, descendants
from simulations.launch.superlink import LocalSuperLink
from simulations.simulate import write_run_config
from tests.conftest import tiny_bert

PLATFORMS = ("action", "comedy", "drama")


@dataclass(frozen=True)
class DeployKit:
    root: Path
    certs: Path
    platforms: Path
    encoder: Path

    def site_key(self, site: str) -> Path:
        return self.certs / "sites" / site / "node.key"

    def site_pub(self, site: str) -> Path:
        return self.certs / "sites" / site / "node.pub"

    def run_config(self, name: str, overrides: dict[str, object]) -> tuple[FedxrecConfig, Path]:
        """A small federation's config, written as a Flower run-config file."""
        flat = {
            "model.encoder": str(self.encoder),
            "model.history_items": 10,
            "model.max_item_tokens": 16,
            "data.max_users": 8,
            "federation.rounds": 2,
            "federation.platforms": 2,
            "federation.eval_users": 4,
            "federation.round_timeout": 600.0,
            "federation.out_dir": str(self.root / name / "out"),
            # A fixed σ: scenarios sharing a site's ledger must not plan to spend the whole
            # budget in the first federation (noise is otherwise fitted to ε over the run).
            "privacy.noise_multiplier": 1.0,
            "privacy.epsilon": 1000.0,
            "train.batch_size": 4,
            "train.steps": 4,
            "train.lora_steps": 1,
            # Personalising is one more ClientApp process per site (torch, transformers, peft
            # and Opacus imported: ~8 CPU s); only the scenario that checks it turns it on.
            "train.personalize_steps": 0,
            "train.threads": 1,  # several ClientApps share two cores
            **overrides,
        }
        cfg = FedxrecConfig.from_flat(flat)
        (self.root / name).mkdir(parents=True, exist_ok=True)
        return cfg, write_run_config(cfg, self.root / name / "run_config.toml")


@pytest.fixture(scope="session")
def deploy_kit(tmp_path_factory, tiny_vocab) -> DeployKit:
    root = tmp_path_factory.mktemp("deploy")
    certs = root / "certs"
    init_certs(certs, ["127.0.0.1"], [*PLATFORMS, "rogue"])
    cfg = FedxrecConfig.from_flat({"data.max_users": 8, "data.platforms": ",".join(PLATFORMS)})
    prepare_platforms(cfg.data, root / "platforms")
    encoder = root / "encoder"
    tokenizer, base = tiny_bert(tiny_vocab)
    base.save_pretrained(encoder)
    tokenizer.save_pretrained(encoder)
    return DeployKit(root, certs, root / "platforms", encoder)


APP_DIR = Path(__file__).resolve().parents[3]
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


# ---- the scenarios ---------------------------------------------------------------------------


def resume_chain(kit: DeployKit, links: list[LocalSuperLink]) -> dict[str, Any]:
    link = _link(kit, "resume", links)
    sites = {}
    for site in ("action", "comedy"):
        link.register_supernode(kit.site_pub(site))
        sites[site] = _site(kit, link, site, "resume")
    rogue = LocalSuperNode(
        link,
        "rogue",
        data_path=kit.platforms / "action",
        state_dir=kit.root / "resume" / "state" / "rogue",
        private_key=kit.site_key("rogue"),  # a valid key pair, never registered
    ).start()
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
    try:
        rogue_exit: int | str = rogue.wait_for_exit()
    except WaitError as err:  # its test fails with this
        rogue_exit = str(err)
    return {
        "rogue_exit": rogue_exit,
        "rogue_log": rogue.log(),
        "known_nodes": link.supernodes(),
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
