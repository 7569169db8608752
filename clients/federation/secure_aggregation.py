"""The site's side of secure aggregation (Flower's SecAgg+), around the one training handler.

SecAgg+ exists only on Flower's legacy server workflow. Its train messages carry a
``secaggplus_configs`` record, and the round's adapter as legacy "fitins" records. ``secure_mod``
hands exactly those messages to Flower's ``secaggplus_mod``, which answers the key-exchange and
unmasking stages itself and, in the "collect masked vectors" stage, calls our train handler, masks
the adapter it returns and sends only the masked vector (it empties the plain arrays of the reply).
Every other message (Message-API training, evaluation, queries) passes straight through.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

from shared.records import to_parameters


class _Refused(Exception):
    """Our handler refused to train; carries its error reply out of ``secaggplus_mod``."""

    def __init__(self, reply: Message) -> None:
        super().__init__(reply.error.reason)
        self.reply = reply


def is_secure_round(msg: Message) -> bool:
    return RECORD_KEY_CONFIGS in msg.content.config_records


def secure_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Route SecAgg+ protocol messages through ``secaggplus_mod``; pass everything else on."""
    if msg.has_error() or not is_secure_round(msg):
        return call_next(msg, context)

    def train_or_refuse(m: Message, c: Context) -> Message:
        reply = call_next(m, c)
        if reply.has_error():  # secaggplus_mod expects a FitRes: keep our refusal's reason
            raise _Refused(reply)
        return reply

    try:
        return secaggplus_mod(msg, context, train_or_refuse)
    except _Refused as refused:
        return Message(refused.reply.error, reply_to=msg)


def read_legacy_fit(msg: Message) -> tuple[list[np.ndarray], dict]:
    """The global adapter (unnamed, in state-dict order) and the round's config from "fitins"."""
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    return parameters_to_ndarrays(fitins.parameters), dict(fitins.config)


def legacy_fit_reply(
    arrays: dict[str, np.ndarray], num_examples: int, metrics: dict[str, float]
) -> RecordDict:
    """The content of a legacy "fitres" reply: what ``secaggplus_mod`` masks and sends."""
    res = FitRes(
        status=Status(Code.OK, ""),
        parameters=to_parameters(arrays),
        num_examples=num_examples,
        metrics=metrics,
    )
    return compat.fitres_to_recorddict(res, keep_input=False)


def check_clipping_range(arrays: dict[str, np.ndarray], clipping_range: float) -> None:
    """SecAgg+ clips weights to ±range before quantising: refuse rather than send a clipped one."""
    largest = max(float(np.abs(v).max()) for v in arrays.values())
    if largest > clipping_range:
        raise ValueError(
            f"an adapter weight reaches {largest:.3g}, outside secure aggregation's clipping range "
            f"±{clipping_range:g}: raise federation.secagg_clipping_range (the coordinator's and "
            "every site's run config share it)"
        )
