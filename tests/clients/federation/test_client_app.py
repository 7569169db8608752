"""The ClientApp's handlers, called in process with real Flower messages: what leaves a site."""

import dataclasses

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from clients.federation import client_app
from clients.scorer.collaborative import build_collaborative_index
from shared.adapter import get_adapter_arrays, trained_arrays, with_fixed
from shared.data import load_platform
from shared.model import build_recommender, load_base_encoder, load_tokenizer
from shared.records import PERSONALIZE, TrainingRecord, from_array_record, to_array_record
from shared.whitening import CatalogueMoments, catalogue_moments
from tests.clients.scorer.support import save_tiny_encoder
from tests.conftest import tiny_federation_config, write_synthetic_site


@pytest.fixture
def site(tmp_path, tiny_vocab):
    """A site's folders (data, state) and the run config of a tiny federation."""
    write_synthetic_site(tmp_path / "data", users=12, seed=2)
    cfg = tiny_federation_config(save_tiny_encoder(tiny_vocab, tmp_path / "encoder"))
    node = {
        "platform": "tiny",
        "data-path": str(tmp_path / "data"),
        "state-dir": str(tmp_path / "state"),
    }
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 1, 1
    context = Context(7, 1, node, RecordDict(), cfg.to_flat())
    return cfg, context, tmp_path


def _message(content: RecordDict, kind: str) -> Message:
    return Message(content, dst_node_id=1, message_type=kind)


def test_a_site_sends_its_adapter_and_aggregates_never_its_local_statistics(site):
    cfg, context, root = site
    # The site's own collaborative index exists on its disk (as `fedxrec rank` builds it).
    data = load_platform(root / "data", "tiny")
    local = build_collaborative_index(data, data.sequences)
    local.save(root / "state" / "collaborative.safetensors")

    rec = build_recommender(
        cfg.model, base=load_base_encoder(cfg.model), tokenizer=load_tokenizer(cfg.model)
    )
    adapter = get_adapter_arrays(rec)
    train_in = RecordDict(
        {"arrays": to_array_record(adapter), "config": ConfigRecord({"server_round": 1})}
    )
    reply = client_app.train(_message(train_in, MessageType.TRAIN), context)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert set(reply.content.keys()) == {"arrays", "metrics"}
    sent = from_array_record(reply.content["arrays"])
    # the LoRA and the head's trained tensors, nothing else (not even the fixed whitening)
    assert list(sent) == list(trained_arrays(adapter))
    assert all(sent[k].shape == adapter[k].shape for k in sent)
    # the metrics are the round's aggregates, each a scalar: no vector of counts can hide there
    assert TrainingRecord.from_record(reply.content["metrics"]).users == 12
    assert set(reply.content["metrics"]) == {f.name for f in dataclasses.fields(TrainingRecord)}
    assert all(np.ndim(v) == 0 for v in reply.content["metrics"].values())

    personal_in = RecordDict(
        {
            "arrays": to_array_record(with_fixed(sent, adapter)),
            "config": ConfigRecord({"server_round": 2, "validation_users": 5}),
        }
    )
    reply = client_app.app(_message(personal_in, PERSONALIZE), context)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert set(reply.content.keys()) == {"metrics", "choice", "validation", "test"}  # no weights
    for record in reply.content.values():
        assert all(np.ndim(v) == 0 for v in record.values())

    eval_in = RecordDict(
        {
            "arrays": to_array_record(with_fixed(sent, adapter)),
            "config": ConfigRecord({"splits": "validation,test"}),
        }
    )
    reply = client_app.evaluate(_message(eval_in, MessageType.EVALUATE), context)
    assert set(reply.content.keys()) == {"validation", "test"}
    for record in reply.content.values():
        assert all(np.ndim(v) == 0 for v in record.values())
    reply = client_app.query(_message(RecordDict(), MessageType.QUERY), context)
    assert set(reply.content.keys()) == {"info", "catalogue"}
    assert all(np.ndim(v) == 0 for v in reply.content["info"].values())
    # the catalogue's moments are those of its item texts alone: no user's data is in them
    moments = CatalogueMoments.from_arrays(from_array_record(reply.content["catalogue"]))
    with rec.model.peft_model.disable_adapter():
        texts = rec.encode(data.item_texts, cfg.model.max_item_tokens)
    expected = catalogue_moments(texts)
    assert moments.items == len(data.items)
    np.testing.assert_allclose(moments.mean, expected.mean, atol=1e-6)
    np.testing.assert_allclose(moments.covariance, expected.covariance, atol=1e-6)
