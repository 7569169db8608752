"""One training round, two ways to aggregate: plain FedAvg or FedAvg under SecAgg+.

Both send the global adapter to the sites, train there, and return the same ``TrainOutcome``: the
average of the tensors the sites trained (or None: the coordinator puts the fixed whitening back),
each site's training metrics, the sites that refused, and the sites that went silent. The coordinator's bookkeeping around it (saving, evaluation, checkpoints) does
not know which one ran.

Plain FedAvg (Flower's Message API) sees every site's adapter. With secure aggregation, Flower's
``SecAggPlusWorkflow`` (it exists only on the legacy server workflow) masks each adapter on its
site; the coordinator receives masked vectors and unmasks only their weighted sum. It never holds
one site's adapter, so it can neither write nor log one.

SecAgg+ arithmetic: each site multiplies its adapter by ``users / max_weight``, clips it to
``±clipping_range`` and quantises it to ``2**bits`` levels (stochastic rounding); sums are taken
modulo 2**32. The unmasked average differs from plain FedAvg by at most
``sites * (2 * clipping_range / 2**bits) * max_weight / total_users`` per weight (the tolerance
``secagg_tolerance`` computes): about 2.4e-7 with the defaults and similar-sized sites.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common import FitIns, FitRes, Parameters
from flwr.common.constant import ErrorCode
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid

from shared.adapter import trained_arrays
from shared.config import FederationConfig
from shared.records import (
    TrainingRecord,
    TrainInstruction,
    array_record_nbytes,
    from_array_record,
    from_parameters,
    refusal_text,
    to_array_record,
)


@dataclass
class TrainOutcome:
    arrays: ArrayRecord | None  # the average of the trained tensors; None = nothing to aggregate
    metrics: dict[int, TrainingRecord] = field(default_factory=dict)  # node -> its training report
    refused: dict[int, str] = field(default_factory=dict)  # node -> the site's reason
    silent: set[int] = field(default_factory=set)  # nodes that never answered (dead or too slow)
    bytes_up: dict[int, int] = field(default_factory=dict)  # node -> adapter bytes it sent


def fedavg(updates: list[tuple[dict[str, np.ndarray], float]]) -> OrderedDict[str, np.ndarray]:
    """The weighted mean of the sites' adapters (weights: their trainable users). The one FedAvg:
    the coordinator's rounds and the in-process federation of `fedxrec compare` both call it."""
    total = sum(weight for _, weight in updates)
    if not updates or total <= 0:
        raise ValueError("nothing to average: no site sent an adapter with a positive weight")
    names = list(updates[0][0])
    return OrderedDict(
        (
            name,
            sum(
                np.asarray(arrays[name], dtype=np.float64) * (w / total) for arrays, w in updates
            ).astype(np.float32),
        )
        for name in names
    )


def secagg_tolerance(fed: FederationConfig, sites: int, max_weight: float, users: float) -> float:
    """Largest difference between the SecAgg+ average and plain FedAvg, per weight."""
    step = 2 * fed.secagg_clipping_range / 2**fed.secagg_quantization_bits
    return sites * step * max_weight / users


# ---- plain FedAvg (Message API) ----------------------------------------------------------------


def fedavg_round(
    grid: Grid,
    arrays: ArrayRecord,
    instructions: dict[int, TrainInstruction],
    *,
    timeout: float,
    min_replies: int,
) -> TrainOutcome:
    """Send ``arrays`` with each node's ``TrainInstruction``; FedAvg of the adapters that come
    back, when at least ``min_replies`` sites trained."""
    messages = [
        Message(
            RecordDict({"arrays": arrays, "config": ConfigRecord(instruction.to_record())}),
            dst_node_id=n,
            message_type=MessageType.TRAIN,
        )
        for n, instruction in instructions.items()
    ]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    trained = [m for m in replies if not m.has_error()]
    outcome = TrainOutcome(arrays=None)
    answered = {m.metadata.src_node_id for m in replies}
    outcome.silent = set(instructions) - answered
    for m in replies:
        node = m.metadata.src_node_id
        if not m.has_error():
            outcome.metrics[node] = TrainingRecord.from_record(m.content["metrics"])
            outcome.bytes_up[node] = array_record_nbytes(m.content["arrays"])
        elif m.error.code == ErrorCode.NODE_UNAVAILABLE:
            outcome.silent.add(node)
        else:
            outcome.refused[node] = refusal_text(m.error.code, m.error.reason)
    if len(trained) >= min_replies:
        updates = [
            (
                from_array_record(m.content["arrays"]),
                float(outcome.metrics[m.metadata.src_node_id].users),
            )
            for m in trained
        ]
        outcome.arrays = to_array_record(fedavg(updates))
    return outcome


# ---- FedAvg under SecAgg+ (legacy workflow) ----------------------------------------------------


class _SecureRound(Strategy):
    """The legacy strategy SecAggPlusWorkflow drives for one round.

    ``configure_fit`` sends the global adapter to the given nodes; ``aggregate_fit`` receives,
    for every site that completed the protocol, its metrics and user count with ``parameters``
    already replaced by the unmasked weighted average (the workflow does that), and keeps them.
    """

    def __init__(self, instructions: dict[int, TrainInstruction], grid: Grid, run_id: int) -> None:
        self.instructions, self.grid, self.run_id = instructions, grid, run_id
        self.average: Parameters | None = None
        self.results: list[tuple[ClientProxy, FitRes]] = []
        self.failures: list[BaseException | tuple[ClientProxy, FitRes]] = []

    def configure_fit(self, server_round, parameters, client_manager):
        return [
            (GridClientProxy(n, self.grid, self.run_id), FitIns(parameters, i.to_record()))
            for n, i in self.instructions.items()
        ]

    def aggregate_fit(self, server_round, results, failures):
        self.results, self.failures = list(results), list(failures)
        if results:
            self.average = results[0][1].parameters  # the same sum for every result
        return self.average, {}

    def initialize_parameters(self, client_manager):
        return None

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []  # the coordinator evaluates with its own messages

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None


class SecureAggregation:
    """FedAvg under SecAgg+: the coordinator only ever unmasks the sum of the sites' adapters."""

    def __init__(self, fed: FederationConfig, context: Context, max_weight: float) -> None:
        self.fed, self.context, self.max_weight = fed, context, max_weight

    def settings(self) -> dict[str, float]:
        fed = self.fed
        return {
            "shares": fed.secagg_shares,
            "threshold": fed.secagg_threshold,
            "clipping_range": fed.secagg_clipping_range,
            "quantization_range": 2**fed.secagg_quantization_bits,
            "max_weight": self.max_weight,
        }

    def workflow(self) -> SecAggPlusWorkflow:
        return SecAggPlusWorkflow(
            num_shares=self.fed.secagg_shares,
            reconstruction_threshold=self.fed.secagg_threshold,
            max_weight=self.max_weight,
            clipping_range=self.fed.secagg_clipping_range,
            quantization_range=2**self.fed.secagg_quantization_bits,
            timeout=self.fed.round_timeout,
        )

    def round(
        self,
        grid: Grid,
        arrays: ArrayRecord,
        instructions: dict[int, TrainInstruction],
        *,
        min_replies: int,
        log: Callable[[str], None] = print,
    ) -> TrainOutcome:
        if not instructions:
            return TrainOutcome(arrays=None)
        names = list(trained_arrays(from_array_record(arrays)))  # the order the sites send
        nodes = list(instructions)
        (server_round,) = {i.server_round for i in instructions.values()}
        strategy = _SecureRound(instructions, grid, self.context.run_id)
        legacy = LegacyContext(
            context=self.context, config=ServerConfig(num_rounds=server_round), strategy=strategy
        )
        legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
            {Key.CURRENT_ROUND: server_round, Key.START_TIME: time.time()}
        )
        legacy.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
            compat.arrayrecord_to_parameters(arrays, keep_input=True), keep_input=True
        )
        self.workflow()(grid, legacy)

        outcome = TrainOutcome(arrays=None)
        for proxy, res in strategy.results:
            outcome.metrics[proxy.node_id] = TrainingRecord.from_record(res.metrics)
        missing = set(nodes) - set(outcome.metrics)
        reasons = [_reason(f) for f in strategy.failures]
        # Failures carry no node id: name the nodes that did not finish, with every reason given.
        for node in missing:
            outcome.refused[node] = "; ".join(r for r in reasons if r) or "no reply"
        outcome.silent = missing
        if strategy.average is None:
            log(f"[fedxrec] round {server_round}: secure aggregation did not complete")
        elif len(strategy.results) >= min_replies:
            outcome.arrays = to_array_record(from_parameters(strategy.average, names))
        return outcome


def _reason(failure: BaseException | tuple) -> str:
    if isinstance(failure, BaseException):
        error = failure.args[0] if failure.args else failure
        if hasattr(error, "code") and hasattr(error, "reason"):  # a site's error reply
            return refusal_text(int(error.code), str(error.reason))
        return str(error)
    return str(failure[1].status.message)
