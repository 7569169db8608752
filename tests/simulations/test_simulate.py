"""`fedxrec simulate`: end to end on a real SuperLink + Flower simulation engine (Ray), marked
integration; and it never loses a run: everything is checked before anything is deleted."""

import json
import shutil
import uuid

import numpy as np
import pytest
import torch
from peft import PeftModel

from shared.adapter import load_adapter, read_adapter
from shared.config import DataConfig, ModelConfig
from shared.data import DataError, load_platform
from shared.model import TextEncoder, build_recommender, load_base_encoder
from simulations.cli import main
from simulations.data.partition import prepare_platforms
from simulations.launch import superlink
from simulations.launch.processes import TAG_VARIABLE


@pytest.fixture(scope="module")
def simulation_run(tmp_path_factory):
    """The run's folder and the tags of the processes it started (another test may run its
    own federation beside it, with processes of other tags)."""
    out = tmp_path_factory.mktemp("sim")
    tags = []
    real = uuid.uuid4

    def recorded():
        value = real()
        tags.append(value.hex)
        return value

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(superlink.uuid, "uuid4", recorded)
        code = _simulate(out)
    assert code == 0
    assert tags  # the launcher tagged what it started
    return out, tags


@pytest.fixture(scope="module")
def simulation(simulation_run):
    return simulation_run[0]


def _simulate(out):
    return main(
        [
            "simulate", "--out", str(out), "--rounds", "2", "--max-users", "12",
            "--platforms", "action,comedy", "--epsilon", "8",
            "--set", "train.batch_size=6", "--set", "train.steps=6", "--set", "train.lora_steps=1",
            "--set", "train.lora_items=1", "--set", "train.personalize_steps=2",
        ]
    )  # fmt: skip


@pytest.mark.integration
def test_outputs_and_metrics(simulation):
    metrics = json.loads((simulation / "metrics.json").read_text())
    assert metrics["completed_rounds"] == 2
    assert [r["round"] for r in metrics["rounds"]] == [0, 1, 2]
    for entry in metrics["rounds"][1:]:
        assert set(entry["platforms"]) == {"action", "comedy"}
        for m in entry["platforms"].values():
            assert {"loss", "epsilon", "validation"} <= set(m)
            assert set(m["validation"]) >= {"recall@10", "recall@20", "ndcg@10", "ndcg@20", "mrr"}
    last = metrics["rounds"][-1]["platforms"]
    assert all(0 < m["epsilon"] <= 8.0 for m in last.values())
    assert (
        set(metrics["final"]["zero_shot"])
        == set(metrics["final"]["federated"])
        == {"action", "comedy"}
    )
    assert set(metrics["final"]["personalized"]) == {"action", "comedy"}
    for name, p in metrics["personalization"].items():
        assert 0 < p["epsilon"] <= 8.0 and p["steps"] == 2
        assert p["epsilon"] >= last[name]["epsilon"]  # paid from the same budget, after the rounds
        personal = read_adapter(simulation / "state" / name / "personal")
        assert personal.keys() == read_adapter(simulation / "adapter").keys()
    report = (simulation / "report.md").read_text()
    for label in ("Popularity", "ItemKNN", "zero-shot", "federated", "personalised", "ml-100k"):
        assert label in report


@pytest.mark.integration
def test_global_adapter_changed_and_loads_with_peft(simulation):
    initial = read_adapter(simulation / "rounds" / "round-000")
    final = read_adapter(simulation / "adapter")
    assert initial.keys() == final.keys()
    assert any(not np.allclose(initial[k], final[k]) for k in final)

    cfg = ModelConfig()
    ours = build_recommender(cfg)
    load_adapter(ours, simulation / "adapter")
    peft_model = PeftModel.from_pretrained(load_base_encoder(cfg), str(simulation / "adapter"))
    theirs = TextEncoder(peft_model.eval())
    data = load_platform(simulation / "platforms" / "action", "action")
    histories = [data.split(u, "test")[0] for u in range(3)]
    with torch.no_grad():
        ours_items = ours.encode_items(data.item_texts)
        texts = theirs(**ours.tokenize(data.item_texts, cfg.max_item_tokens))
        ours_texts = ours.encode(data.item_texts, cfg.max_item_tokens)
        torch.testing.assert_close(texts, ours_texts, atol=1e-5, rtol=1e-4)  # peft's own LoRA
        # the head beside it, over peft's text vectors, ranks as fedxrec does
        items = ours.item_vectors(texts)
        torch.testing.assert_close(
            ours.scores(histories, items), ours.scores(histories, ours_items), atol=1e-4, rtol=1e-4
        )
    assert any(np.abs(v).max() > 0 for k, v in final.items() if k.startswith("head."))


@pytest.mark.integration
def test_no_process_left_behind(simulation_run):
    import os
    from pathlib import Path

    needles = {f"{TAG_VARIABLE}={tag}".encode() for tag in simulation_run[1]}
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if environ & needles:
            left.append(pid)
    assert left == []


def _finished_run(out):
    """The files a finished run leaves (their content does not matter here)."""
    for folder in ("platforms/a", "state/a", "rounds/round-001", "adapter"):
        (out / folder).mkdir(parents=True)
    (out / "metrics.json").write_text("{}")
    (out / "state" / "a" / "privacy_ledger.json").write_text("{}")
    return sorted(p.relative_to(out) for p in out.rglob("*"))


def test_a_finished_run_is_never_replaced_without_overwrite(tmp_path, capsys):
    before = _finished_run(tmp_path)
    assert main(["simulate", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "holds a previous run" in err and "--resume" in err and "--overwrite" in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_bad_data_is_refused_before_an_overwrite_deletes_anything(tmp_path, capsys):
    before = _finished_run(tmp_path)
    code = main(["simulate", "--out", str(tmp_path), "--overwrite", "--data", "ml-100kk"])
    assert code == 2 and "neither a known data set" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_resume_needs_a_stopped_federation_and_keeps_its_platforms(tmp_path, capsys):
    assert main(["simulate", "--out", str(tmp_path), "--resume"]) == 2
    assert "holds no stopped federation" in capsys.readouterr().err
    assert main(["simulate", "--out", str(tmp_path), "--resume", "--data", "ml-1m"]) == 2
    assert "drop --data" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: one or the other
        main(["simulate", "--out", str(tmp_path), "--resume", "--overwrite"])
    assert "not allowed with argument --resume" in capsys.readouterr().err


def test_platform_names_that_cannot_travel_are_refused_up_front(tmp_path, platform_dir):
    data = tmp_path / "mine"
    shutil.copytree(platform_dir, data / "books,films")
    with pytest.raises(DataError, match="'books,films'.*no commas"):
        prepare_platforms(DataConfig(dataset=str(data)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_platforms_and_max_users_apply_to_your_own_data(tmp_path, platform_dir):
    data = tmp_path / "mine"
    for name in ("books", "films", "news"):
        shutil.copytree(platform_dir, data / name)
    cfg = DataConfig(dataset=str(data), platforms="films,news", max_users=2)
    names = prepare_platforms(cfg, tmp_path / "out")
    assert names == ["films", "news"]
    from shared.data import load_platform

    assert all(load_platform(tmp_path / "out" / n, n).num_users == 2 for n in names)
    with pytest.raises(DataError, match="--platforms names music"):
        prepare_platforms(DataConfig(dataset=str(data), platforms="music"), tmp_path / "o2")


def test_a_data_error_names_your_file_not_the_copy(tmp_path, platform_dir):
    data = tmp_path / "mine" / "books"
    shutil.copytree(platform_dir, data)
    with (data / "interactions.csv").open("a") as fh:
        fh.write("u1,m1,yesterday,5\n")
    with pytest.raises(DataError) as err:
        prepare_platforms(DataConfig(dataset=str(tmp_path / "mine")), tmp_path / "out")
    assert str(data / "interactions.csv") in str(err.value) and "timestamp" in str(err.value)


def test_a_round_in_which_no_site_trained_fails_the_simulation(
    tmp_path, platform_dir, monkeypatch, capsys
):
    """The federation ran, but its second round trained nobody (every site refused): the run is
    reported and `simulate` exits 1 saying which round and why, not 0 with `loss nan`."""
    from contextlib import contextmanager

    from server.run_log import FederationLog
    from shared.config import FedxrecConfig
    from simulations import simulate
    from tests.server.test_run_log import _ranking, _train

    for name in ("books", "films"):
        shutil.copytree(platform_dir, tmp_path / "mine" / name)
    out = tmp_path / "out"

    class Link:
        def run_app(self, *args, **kwargs):
            log = FederationLog.start(FedxrecConfig(), run_id="1")
            for name in ("books", "films"):
                log.record_platform(name, 10, 8)
            log.record_evaluation(0, {"books": _ranking(0.1), "films": _ranking(0.1)})
            log.record_training(1, {"books": _train(3.0, 4.0), "films": _train(3.0, 4.0)}, {})
            log.record_evaluation(1, {"books": _ranking(0.2), "films": _ranking(0.2)})
            refused = {"books": "budget exhausted", "films": "budget exhausted"}
            log.record_training(2, {}, refused)
            log.record_evaluation(2, {"books": _ranking(0.2), "films": _ranking(0.2)})
            log.record_final({}, {"books": _ranking(0.2), "films": _ranking(0.2)})
            log.write(out)

    @contextmanager
    def superlink(*args, **kwargs):
        yield Link()

    monkeypatch.setattr(simulate, "local_superlink", superlink)
    monkeypatch.setattr(simulate, "baseline_metrics", lambda *args, **kwargs: {})
    code = main(["simulate", "--out", str(out), "--data", str(tmp_path / "mine"), "--rounds", "2"])
    err = capsys.readouterr().err
    assert code == 1
    assert "no site trained in round(s) 2 of 2" in err and "budget exhausted" in err
    assert (out / "report.md").is_file()  # the run is reported all the same
