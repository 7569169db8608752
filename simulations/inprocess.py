"""The federation on one machine, in one process: the product's coordinator and ClientApp, no network.

``InProcessGrid`` is a Flower ``Grid`` whose nodes answer each message in this process with the
real ClientApp (clients/federation/client_app.py: its mods, its handlers). Messages go through
Flower's own wire format (protobuf) both ways, so the coordinator and a site share nothing a
deployment would not send. ``federate`` runs server.server_app's ``Coordinator`` over it: the round
loop, the reply quorum, the aggregate's sanity probe, the ledger roll-back check, checkpoints and
metrics.json are the code a deployed federation runs. The encoder is loaded once per process
(``shared.model.process_recommender``), which is what makes `fedxrec compare` and `fedxrec audit`
affordable. `fedxrec simulate` runs the same ClientApp and ServerApp in Flower's simulation engine.
"""

from __future__ import annotations

import io
import sys
import traceback
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from server.run_log import FederationLog
from shared.adapter import read_adapter
from shared.config import FedxrecConfig
from shared.data import Interaction, PlatformData, write_platform

Arrays = OrderedDict[str, np.ndarray]
Log = Callable[[str], None]
FIRST_NODE_ID = 1001


def _over_the_wire(message: Message) -> Message:
    """The message as the other side receives it: serialised and parsed by Flower."""
    return message_from_proto(message_to_proto(message))


class InProcessGrid(Grid):
    """Nodes of this process: each a Flower ``Context`` (its node config names the site's data
    and state folders) answered by ``app``. ``sent`` keeps every message as delivered, for tests
    that check what crosses the boundary."""

    def __init__(
        self, sites: dict[int, Context], *, run_id: int, app: ClientApp | None = None
    ) -> None:
        if app is None:
            from clients.federation.client_app import app as site_app

            app = site_app
        self.sites, self.app = sites, app
        self._run = Run.create_empty(run_id)
        self._replies: dict[str, Message] = {}
        self.sent: list[Message] = []
        self.received: list[Message] = []

    # -- Grid ------------------------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.sites)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message to its node and keep the reply until it is pulled."""
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # as a SuperLink does
            delivered = _over_the_wire(msg)
            self.sent.append(delivered)
            reply = self._answer(delivered)
            self.received.append(reply)
            self._replies[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        # Every node answers before push_messages returns: there is nothing to wait for.
        return list(self.pull_messages(list(self.push_messages(messages))))

    # -- the nodes -------------------------------------------------------------------------
    def _answer(self, msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        context = self.sites.get(node)
        if context is None:
            reply = Message(
                Error(code=ErrorCode.NODE_UNAVAILABLE, reason=f"no node {node}"), reply_to=msg
            )
        else:
            try:
                reply = self.app(msg, context)
            except Exception as err:  # as a SuperNode does: the error goes back as the reply
                traceback.print_exc(file=sys.stderr)
                reason = f"{type(err).__name__}: {err}"
                code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
                reply = Message(Error(code=code, reason=reason), reply_to=msg)
        return _over_the_wire(reply)


@dataclass(frozen=True)
class FederationRun:
    """What a federation left in its folder: the coordinator's ``out/`` (metrics.json, every
    round's adapter, the final one) and each site's ``state/NAME`` (ledger, personal model)."""

    root: Path

    @property
    def out(self) -> Path:
        return self.root / "out"

    def state(self, platform: str) -> Path:
        return self.root / "state" / platform

    @property
    def log(self) -> FederationLog:
        return FederationLog.read(self.out)

    def global_adapter(self) -> Arrays:
        return read_adapter(self.out / "adapter")

    def round_adapter(self, server_round: int) -> Arrays:
        return read_adapter(self.out / "rounds" / f"round-{server_round:03d}")

    def personal_adapters(self) -> dict[str, Arrays]:
        """Each site's personal model (the sites that personalised)."""
        return {
            name: read_adapter(self.state(name) / "personal")
            for name in self.log.platforms
            if (self.state(name) / "personal").is_dir()
        }


def federate(
    platforms: dict[str, Path],
    cfg: FedxrecConfig,
    root: Path,
    *,
    run_id: int = 1,
    on_line: Log | None = None,
) -> FederationRun:
    """A federation of ``platforms`` (name → the site's data folder), coordinated by
    server.server_app's ``Coordinator`` over an ``InProcessGrid``; everything it writes goes
    under ``root``. ``on_line`` receives each line the coordinator and the sites print
    (None: printed as usual). A single platform is local-only training; pooled data in one
    folder is centralized training."""
    from server.server_app import Coordinator

    run = FederationRun(Path(root))
    cfg = cfg.with_overrides(
        {"federation.out_dir": str(run.out), "federation.platforms": len(platforms)}
    )
    flat = cfg.to_flat()
    sites = {}
    for node, (name, folder) in enumerate(platforms.items(), start=FIRST_NODE_ID):
        node_config = {
            "platform": name,
            "data-path": str(folder),
            "state-dir": str(run.state(name)),
            # one machine, one experimenter: figures reproducible from train.seed
            "reproducible-noise": "true",
        }
        sites[node] = Context(run_id, node, node_config, RecordDict(), dict(flat))
    grid = InProcessGrid(sites, run_id=run_id)
    with _as_server(run_id), _lines_to(on_line):
        Coordinator(grid, cfg, Context(run_id, SUPERLINK_NODE_ID, {}, RecordDict(), flat)).run()
    return run


@contextmanager
def _as_server(run_id: int) -> Iterator[None]:
    """Messages the coordinator creates carry this run and the SuperLink's node, as in Flower."""
    names = ("_run_id", "_node_id", "_task_id")
    saved = [getattr(TaskIdentity, name) for name in names]  # None where unset
    for name, value in zip(names, (run_id, SUPERLINK_NODE_ID, 1), strict=True):
        setattr(TaskIdentity, name, value)
    try:
        yield
    finally:
        for name, value in zip(names, saved, strict=True):
            setattr(TaskIdentity, name, value)


class _LineWriter(io.TextIOBase):
    """Standard output as lines for ``on_line``; what ``on_line`` prints itself goes out."""

    def __init__(self, on_line: Log, out: io.TextIOBase) -> None:
        self.on_line, self.out, self.pending = on_line, out, ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        with redirect_stdout(self.out):
            for line in lines:
                self.on_line(line)
        return len(text)

    def flush(self) -> None:
        pass


@contextmanager
def _lines_to(on_line: Log | None) -> Iterator[None]:
    if on_line is None:
        yield
        return
    writer = _LineWriter(on_line, sys.stdout)  # type: ignore[arg-type]
    with redirect_stdout(writer):
        yield
    if writer.pending:
        on_line(writer.pending)


def write_platform_data(data: PlatformData, folder: Path) -> Path:
    """A platform held in memory (pooled data, a subset of users) as a site's data folder."""
    interactions = [
        Interaction(user, data.items[item].item_id, float(t))
        for user, seq, times in zip(
            data.users,
            data.sequences,
            data.times or [list(range(len(s))) for s in data.sequences],
            strict=True,
        )
        for item, t in zip(seq, times, strict=True)
    ]
    return write_platform(folder, data.items, interactions)
