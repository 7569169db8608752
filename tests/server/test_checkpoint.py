import json

import pytest

from server.aggregation import secagg_tolerance
from server.checkpoint import CHECKPOINT_FILE, Checkpoint, CheckpointError
from server.run_log import FederationLog
from shared.config import ConfigError, FederationConfig, FedxrecConfig


def _checkpoint(server_round: int) -> Checkpoint:
    return Checkpoint(
        round=server_round,
        adapter=f"rounds/round-{server_round:03d}",
        adapter_hash="abc",
        metrics="metrics.json",
        strategy={"name": "fedavg"},
        model={"model.lora_r": 8},
        zero_shot_test={"a": {"ndcg@10": 0.1}},
        run_ids=["1"],
    )


def test_checkpoint_round_trips_and_is_replaced_atomically(tmp_path):
    _checkpoint(1).write(tmp_path)
    _checkpoint(2).write(tmp_path)
    again = Checkpoint.read(tmp_path)
    assert again.round == 2 and again.adapter == "rounds/round-002"
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_FILE]  # no temporary left


def test_missing_or_broken_checkpoint_says_what_to_do(tmp_path):
    with pytest.raises(CheckpointError, match="without federation.resume"):
        Checkpoint.read(tmp_path)
    (tmp_path / CHECKPOINT_FILE).write_text("{")
    with pytest.raises(CheckpointError, match="unreadable"):
        Checkpoint.read(tmp_path)


def test_resuming_forgets_rounds_past_the_checkpoint(tmp_path):
    log = FederationLog.start(FedxrecConfig(), run_id="1")
    for r in (0, 1, 2):
        log.record_evaluation(r, {"a": {"ndcg@10": 0.1 * r}})
    log.record_final({"a": {}}, {"a": {}})
    log.write(tmp_path)
    again = FederationLog.read(tmp_path)
    again.resume_after(1, "2", FedxrecConfig().to_flat())
    assert [r["round"] for r in again.rounds] == [0, 1]
    assert again.completed_rounds == 1 and again.final == {}
    assert again.resumed == [{"run_id": "2", "from_round": 2}]
    again.write(tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text())["resumed"][0]["run_id"] == "2"


@pytest.mark.parametrize(
    ("flat", "message"),
    [
        ({"federation.secagg_shares": 2}, "secagg_shares"),
        ({"federation.secagg_threshold": 3}, "secagg_threshold"),
        ({"federation.secagg_quantization_bits": 31}, "secagg_quantization_bits"),
        ({"federation.resume": True}, "needs federation.out_dir"),
    ],
)
def test_secagg_and_resume_settings_are_checked(flat, message):
    with pytest.raises(ConfigError, match=message):
        FedxrecConfig.from_flat(flat)


def test_secagg_tolerance_shrinks_with_more_levels():
    fed = FederationConfig()
    assert secagg_tolerance(fed, 2, 8, 16) == pytest.approx(2 * (4 / 2**24) * 8 / 16)
    finer = FederationConfig(secagg_quantization_bits=26)
    assert secagg_tolerance(finer, 2, 8, 16) == secagg_tolerance(fed, 2, 8, 16) / 4
