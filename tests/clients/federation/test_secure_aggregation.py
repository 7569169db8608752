"""The site's side of SecAgg+: which messages go to secaggplus_mod, and the legacy fit records."""

import time

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict
from flwr.common import FitIns, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

from clients.federation.secure_aggregation import (
    check_clipping_range,
    is_secure_round,
    legacy_fit_reply,
    read_legacy_fit,
    secure_mod,
)
from shared.records import from_parameters, to_parameters

ARRAYS = {"a.lora_A": np.full((2, 3), 0.5, np.float32), "a.lora_B": np.zeros((3, 2), np.float32)}


def _message(content: RecordDict) -> Message:
    """A train message as a site receives it."""
    metadata = Metadata(
        run_id=1,
        message_id="m1",
        src_node_id=0,
        dst_node_id=7,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=60.0,
        message_type="train",
    )
    return Message(content, metadata=metadata)


def _context() -> Context:
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})


def test_legacy_fit_records_round_trip_in_state_dict_order():
    fitins = FitIns(to_parameters(ARRAYS), {"server_round": 3})
    msg = _message(compat.fitins_to_recorddict(fitins, keep_input=True))
    arrays, config = read_legacy_fit(msg)
    assert config == {"server_round": 3}
    assert [a.shape for a in arrays] == [(2, 3), (3, 2)]
    reply = legacy_fit_reply(ARRAYS, 12, {"epsilon": 1.5})
    res = compat.recorddict_to_fitres(reply, keep_input=True)
    assert res.num_examples == 12 and res.metrics == {"epsilon": 1.5}
    back = from_parameters(res.parameters, list(ARRAYS))
    assert all(np.array_equal(back[k], ARRAYS[k]) for k in ARRAYS)
    assert len(parameters_to_ndarrays(res.parameters)) == 2


def test_only_secagg_messages_reach_secaggplus_mod():
    plain = _message(RecordDict({"config": ConfigRecord({"server_round": 1})}))
    assert not is_secure_round(plain)
    seen = []
    secure_mod(plain, _context(), lambda m, c: seen.append(m) or m)
    assert seen == [plain]  # passed straight through
    secure = _message(RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({"stage": "setup"})}))
    assert is_secure_round(secure)
    with pytest.raises(KeyError):  # secaggplus_mod took it (and wants a full setup config)
        secure_mod(secure, _context(), lambda m, c: pytest.fail("handler called at setup"))


def test_an_adapter_outside_the_clipping_range_is_refused():
    check_clipping_range(ARRAYS, 0.5)
    with pytest.raises(ValueError, match="secagg_clipping_range"):
        check_clipping_range(ARRAYS, 0.25)
