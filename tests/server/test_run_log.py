import json

from server.run_log import FederationLog
from shared.config import FedxrecConfig
from shared.records import TrainingRecord
from simulations.report import render_report, results_table


def _ranking(x):
    return {
        "recall@10": x,
        "recall@20": x,
        "ndcg@10": x,
        "ndcg@20": x,
        "mrr": x,
        "users": 5.0,
    }


def _train(loss, eps):
    return TrainingRecord(
        loss=loss,
        epsilon=eps,
        delta=0.01,
        noise_multiplier=1.1,
        sample_rate=0.3,
        steps=3,
        lora_steps=1,
        users=10,
        examples=9,
        seconds=1.0,
        ledger_releases=3,
    )


def _log():
    log = FederationLog.start(FedxrecConfig(), run_id="7")
    log.record_platform("a", 10, 20)
    log.record_platform("b", 12, 30)
    log.record_evaluation(0, {"a": _ranking(0.1), "b": _ranking(0.2)})
    log.record_training(1, {"a": _train(3.0, 2.5)}, {"b": "budget exhausted"})
    log.record_evaluation(1, {"a": _ranking(0.3), "b": _ranking(0.2)})
    log.record_final(
        {"a": _ranking(0.1), "b": _ranking(0.2)}, {"a": _ranking(0.3), "b": _ranking(0.25)}
    )
    return log


def test_rounds_are_recorded_per_platform_and_survive_a_round_trip(tmp_path):
    log = _log()
    log.write(tmp_path)
    again = FederationLog.read(tmp_path)
    assert again.completed_rounds == 1
    assert again.rounds[1]["platforms"]["a"]["loss"] == 3.0
    assert again.rounds[1]["platforms"]["a"]["validation"]["ndcg@10"] == 0.3
    assert again.rounds[1]["refused"] == {"b": "budget exhausted"}
    assert again.epsilon_spent() == {"a": 2.5, "b": 0.0}
    assert json.loads((tmp_path / "metrics.json").read_text())["dataset"] == "ml-100k"


def test_report_shows_both_models_and_the_refusal():
    log = _log()
    rows = results_table(log)
    assert rows[1][:2] == ["a", "zero-shot"] and rows[2][:2] == ["a", "federated"]
    assert rows[2][rows[0].index("ndcg@10")] == "0.3000" and rows[2][-1] == "2.5000"
    text = render_report(log)
    assert "round 1, b: budget exhausted" in text and "| a NDCG@10" in text


def test_a_training_record_is_spelled_once_on_the_wire_and_on_disk(tmp_path):
    record = _train(3.0, 2.5)
    assert TrainingRecord.from_record(record.to_record()) == record  # the message's MetricRecord
    log = _log()
    log.write(tmp_path)
    on_disk = FederationLog.read(tmp_path).rounds[1]["platforms"]["a"]
    assert TrainingRecord.from_record(on_disk) == record


def test_an_incomplete_training_record_is_a_clear_error():
    import pytest

    with pytest.raises(ValueError, match="lacks \\['lora_steps'\\]"):
        TrainingRecord.from_record(
            {k: v for k, v in _train(1.0, 1.0).to_record().items() if k != "lora_steps"}
        )


def test_a_round_where_no_site_trained_is_said_not_printed_as_nan(capsys):
    log = _log()
    assert log.idle_rounds() == []  # round 0 is the untuned model's evaluation, not training
    log.record_training(2, {}, {"a": "budget exhausted"})
    log.record_evaluation(2, {"a": _ranking(0.3), "b": _ranking(0.2)})
    log.print_round(2)
    line = capsys.readouterr().out
    assert "nan" not in line
    assert "a: refused" in line and "b: did not train (no reply), val NDCG@10 0.2000" in line
    assert log.idle_rounds() == [2]
