"""The coordinator's round loop in process: the in-process Grid answers each message with the real
ClientApp of two sites (their own data, state and privacy ledgers on disk)."""

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.federation.privacy import PrivacyLedger
from server.aggregation import fedavg
from server.checkpoint import Checkpoint
from server.server_app import Coordinator
from shared.adapter import read_adapter
from shared.data import load_platform
from shared.model import build_recommender
from shared.records import PERSONALIZE, TrainingRecord, from_array_record, to_array_record
from shared.whitening import CatalogueMoments, catalogue_moments
from simulations.inprocess import InProcessGrid
from tests.clients.scorer.support import save_tiny_encoder
from tests.conftest import tiny_federation_config, write_synthetic_site


@pytest.fixture
def federation(tmp_path, tiny_vocab):
    cfg = tiny_federation_config(
        save_tiny_encoder(tiny_vocab, tmp_path / "encoder"),
        **{
            "train.steps": 3,
            "federation.rounds": 2,
            "federation.platforms": 2,
            "federation.out_dir": str(tmp_path / "out"),
        },
    )
    sites = {}
    for node, name in ((11, "books"), (12, "films")):
        write_synthetic_site(tmp_path / name, users=10, seed=node, prefix=name)
        node_config = {
            "platform": name,
            "data-path": str(tmp_path / name),
            "state-dir": str(tmp_path / "state" / name),
            "keep-updates": "true",  # each site keeps a copy of what it sent, for its audit
        }
        sites[node] = Context(3, node, node_config, RecordDict(), cfg.to_flat())
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 3, 0, 1
    return cfg, InProcessGrid(sites, run_id=3), tmp_path


def test_round_loop_aggregates_saves_checkpoints_and_personalises(federation):
    cfg, grid, root = federation
    server = Context(3, 0, {}, RecordDict(), cfg.to_flat())
    Coordinator(grid, cfg, server).run()
    out = root / "out"

    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2]
    for entry in metrics["rounds"][1:]:
        for report in entry["platforms"].values():
            TrainingRecord.from_record(report)  # the same spelling as on the wire
            assert report["lora_steps"] == 1 and 0 < report["epsilon"] <= 8
    assert set(metrics["final"]) == {"zero_shot", "federated", "personalized"}
    assert set(metrics["personalization"]) == {"books", "films"}
    assert Checkpoint.read(out).round == 2

    # Every round's global adapter is the user-weighted FedAvg of what the two sites sent.
    for server_round in (1, 2):
        updates = []
        for name in ("books", "films"):
            sent = read_adapter(
                root / "state" / name / "updates" / "3" / f"round-{server_round:03d}"
            )
            users = metrics["rounds"][server_round]["platforms"][name]["users"]
            updates.append((sent, float(users)))
        expected = fedavg(updates)
        got = read_adapter(out / "rounds" / f"round-{server_round:03d}")
        for key in expected:
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, atol=1e-7)
    final = read_adapter(out / "adapter")
    assert any(
        not np.allclose(final[k], read_adapter(out / "rounds" / "round-000")[k]) for k in final
    )

    # Round 2 tells each site what its ledger showed after round 1 (a lost ledger is caught).
    trains = [m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN]
    second = [m for m in trains if int(m.content["config"]["server_round"]) == 2]
    for msg in second:
        name = grid.sites[msg.metadata.dst_node_id].node_config["platform"]
        reported = metrics["rounds"][1]["platforms"][name]
        assert msg.content["config"]["ledger_releases"] == reported["ledger_releases"] == 1
        assert msg.content["config"]["ledger_epsilon"] == pytest.approx(reported["epsilon"])
    assert Checkpoint.read(out).ledgers.keys() == {"books", "films"}

    # The personalisation is its own message, with the final global model and what each
    # site's ledger showed; its replies carry no weights.
    personal = [m for m in grid.sent if m.metadata.message_type == PERSONALIZE]
    assert len(personal) == 2 and all(m.content["config"]["server_round"] == 3 for m in personal)
    assert all(m.content["config"]["ledger_releases"] == 2 for m in personal)
    assert all("arrays" not in r.content for r in grid.received[-2:])
    for name in ("books", "films"):
        assert read_adapter(root / "state" / name / "personal").keys() == final.keys()

    # The site's ledger accounts for the personalisation (the part that stays home) as for the
    # rounds: a third release of its own steps, the whole history recomputed by the accountant.
    for name in ("books", "films"):
        users = metrics["rounds"][1]["platforms"][name]["users"]
        ledger = PrivacyLedger.open(
            root / "state" / name,
            platform=name,
            num_users=users,
            delta=cfg.privacy.delta,
            epsilon_budget=cfg.privacy.epsilon,
        )
        assert [r.server_round for r in ledger.releases] == [1, 2, 3]
        assert ledger.releases[-1].steps == cfg.train.personalize_steps
        assert ledger.releases[-1].epsilon_after > ledger.releases[1].epsilon_after
        assert ledger.epsilon() == pytest.approx(ledger.releases[-1].epsilon_after)
        assert ledger.epsilon() <= cfg.privacy.epsilon
        assert metrics["personalization"][name]["epsilon"] == pytest.approx(ledger.epsilon())


def _tensors(arrays: dict[str, np.ndarray]) -> set[tuple[str, bytes]]:
    return {(k, np.ascontiguousarray(v).tobytes()) for k, v in arrays.items()}


def test_only_global_models_and_the_sites_dp_releases_cross_the_wire(federation):
    """Every tensor in every message, either way, is a round's global model, what a site
    released under DP (its kept copy) or the moments of a site's public catalogue text (no
    user's data: the same as from the items file alone); the personal model stays on the site's
    disk."""
    cfg, grid, root = federation
    Coordinator(grid, cfg, Context(3, 0, {}, RecordDict(), cfg.to_flat())).run()
    out = root / "out"
    allowed: set[tuple[str, bytes]] = set()
    for folder in [out / "adapter", *(out / "rounds").iterdir()]:
        allowed |= _tensors(read_adapter(folder))
    releases = list((root / "state").glob("*/updates/*/round-*"))
    assert len(releases) == 4  # two sites, two rounds
    for folder in releases:
        allowed |= _tensors(read_adapter(folder))
    wire: set[tuple[str, bytes]] = set()
    catalogues = []
    for msg in [*grid.sent, *grid.received]:
        for name, record in msg.content.array_records.items():
            if name == "catalogue":
                catalogues.append((msg.metadata.src_node_id, from_array_record(record)))
            else:
                wire |= _tensors(from_array_record(record))
    assert wire and wire <= allowed
    assert {node for node, _ in catalogues} == set(grid.sites)
    rec = build_recommender(cfg.model)
    for node, moments in catalogues:
        data = load_platform(Path(grid.sites[node].node_config["data-path"]), "site")
        with rec.model.peft_model.disable_adapter():
            expected = catalogue_moments(rec.encode(data.item_texts, cfg.model.max_item_tokens))
        got = CatalogueMoments.from_arrays(moments)
        assert got.items == expected.items == len(data.items)
        np.testing.assert_allclose(got.covariance, expected.covariance, atol=1e-6)
    for name in ("books", "films"):
        personal = _tensors(read_adapter(root / "state" / name / "personal"))
        assert not (personal - allowed) & wire


def test_a_site_whose_ledger_was_lost_refuses_the_round(federation):
    cfg, grid, root = federation
    server = Context(3, 0, {}, RecordDict(), cfg.to_flat())
    Coordinator(grid, cfg, server).run()
    (root / "state" / "books" / "privacy_ledger.json").unlink()  # lost between federations
    coordinator = Coordinator(grid, cfg, server)
    coordinator._refresh_nodes(wait=True)
    coordinator.ledgers = {"books": (3, 7.9), "films": (3, 7.9)}  # what it had reported
    arrays = to_array_record(read_adapter(root / "out" / "adapter"))
    outcome = coordinator._train(arrays, 1)
    refused = {coordinator._name(n): why for n, why in outcome.refused.items()}
    assert "deleted or rolled back" in refused["books"]  # its budget would start again
    assert "budget" in refused["films"]  # films still has its ledger: its ε is spent


def test_a_federation_where_no_site_trained_fails_and_writes_no_adapter(federation):
    cfg, grid, root = federation
    exhausted = cfg.with_overrides({"privacy.epsilon": 1e-4})  # nothing fits this budget
    for context in grid.sites.values():
        context.run_config.update(exhausted.to_flat())
    server = Context(3, 0, {}, RecordDict(), exhausted.to_flat())
    with pytest.raises(RuntimeError, match="no site trained.*books: .*films: "):
        Coordinator(grid, exhausted, server).run()
    out = root / "out"
    assert not (out / "adapter").exists()
    assert json.loads((out / "metrics.json").read_text())["rounds"][1]["refused"]


def test_the_coordinator_refuses_an_aggregate_with_absurd_weights(federation):
    cfg, grid, root = federation
    coordinator = Coordinator(grid, cfg, Context(3, 0, {}, RecordDict(), cfg.to_flat()))
    from shared.adapter import get_adapter_arrays
    from shared.model import build_recommender

    good = get_adapter_arrays(build_recommender(cfg.model))
    assert coordinator._sane(to_array_record(good), 1)
    weight = "head.adaptor.linear.weight"
    noise = np.random.default_rng(0).standard_normal(good[weight].shape)
    broken = dict(good, **{weight: (1e9 * noise).astype(np.float32)})
    assert not coordinator._sane(to_array_record(broken), 1)
