"""The coordinator's Flower ServerApp: FedAvg over the platforms' LoRA adapters.

Round 0 evaluates the untuned encoder (zero-shot). Each round sends the global adapter to every
platform, averages the adapters that come back (weighted by the platforms' user counts), saves the
new global adapter (peft format) and the round's metrics, then evaluates it on every platform's
validation split. The end evaluates zero-shot and federated adapters on the test split.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from server.run_log import FederationLog
from shared.adapter import get_adapter_arrays, save_adapter
from shared.config import ConfigError, FedxrecConfig
from shared.model import build_recommender, resolve_encoder
from shared.records import from_array_record, to_array_record

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = FedxrecConfig.from_flat(dict(context.run_config), ignore_unknown=True)
    Coordinator(grid, cfg, run_id=str(context.run_id)).run()


class Coordinator:
    """One federation: the round loop, read top to bottom in ``run``."""

    def __init__(self, grid: Grid, cfg: FedxrecConfig, run_id: str) -> None:
        self.grid, self.cfg, self.run_id = grid, cfg, run_id
        fed = cfg.federation
        self.expected = fed.platforms or len(
            [n for n in cfg.simulation.platform_names.split(",") if n]
        )
        if not self.expected:
            raise ConfigError("set federation.platforms to the number of sites that take part")
        self.min_replies = fed.min_nodes or self.expected
        self.fedavg = FedAvg(
            min_train_nodes=self.min_replies,
            min_evaluate_nodes=self.min_replies,
            min_available_nodes=self.expected,
        )
        self.log = FederationLog.start(cfg, run_id)

    # ---- the federation ------------------------------------------------------------------
    def run(self) -> None:
        fed = self.cfg.federation
        self.nodes = self._wait_for_nodes()
        self.platform_of = self._ask_platforms()
        initial = get_adapter_arrays(build_recommender(self.cfg.model, seed=fed.seed))
        arrays = to_array_record(initial)
        self.log.record_evaluation(0, self._evaluate(arrays, "validation"))
        zero_shot_test = self._evaluate(arrays, "test")
        self._save(arrays, 0)
        for server_round in range(1, fed.rounds + 1):
            start = time.perf_counter()
            replies = self._send(MessageType.TRAIN, arrays, {"server-round": server_round})
            trained = [m for m in replies if not m.has_error()]
            self.log.record_training(
                server_round, self._by_platform(trained), self._refusals(replies)
            )
            if len(trained) >= self.min_replies:
                arrays, _ = self.fedavg.aggregate_train(server_round, trained)
            else:
                print(
                    f"[fedxrec] round {server_round}: only {len(trained)} of the {self.min_replies} "
                    "sites needed replied; the global adapter is unchanged this round",
                    flush=True,
                )
            self._save(arrays, server_round)
            self.log.record_evaluation(server_round, self._evaluate(arrays, "validation"))
            self.log.rounds[-1]["seconds"] = round(time.perf_counter() - start, 2)
            self.log.write(fed.out_dir)
            self.log.print_round(server_round)
        self.log.record_final(zero_shot_test, self._evaluate(arrays, "test"))
        self.log.write(fed.out_dir)

    # ---- messaging -----------------------------------------------------------------------
    def _wait_for_nodes(self) -> list[int]:
        deadline = time.monotonic() + self.cfg.federation.round_timeout
        while len(nodes := list(self.grid.get_node_ids())) < self.expected:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {len(nodes)} of {self.expected} sites connected within "
                    f"{self.cfg.federation.round_timeout:.0f}s"
                )
            time.sleep(1)
        return sorted(nodes)

    def _messages(self, kind: str, content: RecordDict) -> list[Message]:
        return [Message(content=content, dst_node_id=n, message_type=kind) for n in self.nodes]

    def _send(self, kind: str, arrays: ArrayRecord, config: dict) -> list[Message]:
        content = RecordDict({"arrays": arrays, "config": ConfigRecord(config)})
        return list(
            self.grid.send_and_receive(
                self._messages(kind, content), timeout=self.cfg.federation.round_timeout
            )
        )

    def _ask_platforms(self) -> dict[int, str]:
        replies = self.grid.send_and_receive(
            self._messages(MessageType.QUERY, RecordDict()),
            timeout=self.cfg.federation.round_timeout,
        )
        names = {}
        for m in replies:
            node = m.metadata.src_node_id
            if m.has_error():
                print(f"[fedxrec] site {node} failed to start: {m.error.reason}", flush=True)
                continue
            info = m.content["info"]
            names[node] = str(info["platform"])
            self.log.record_platform(names[node], int(info["users"]), int(info["items"]))
        return names

    def _name(self, message: Message) -> str:
        node = message.metadata.src_node_id
        return self.platform_of.get(node, f"node-{node}")

    def _by_platform(self, replies: Iterable[Message]) -> dict[str, dict[str, float]]:
        return {
            self._name(m): {k: float(v) for k, v in m.content["metrics"].items()} for m in replies
        }

    def _refusals(self, replies: Iterable[Message]) -> dict[str, str]:
        return {self._name(m): m.error.reason for m in replies if m.has_error()}

    def _evaluate(self, arrays: ArrayRecord, split: str) -> dict[str, dict[str, float]]:
        users = self.cfg.federation.eval_users if split == "validation" else 0
        replies = self._send(MessageType.EVALUATE, arrays, {"split": split, "max-users": users})
        for name, reason in self._refusals(replies).items():
            print(f"[fedxrec] {name} could not evaluate: {reason}", flush=True)
        return self._by_platform(m for m in replies if not m.has_error())

    def _save(self, arrays: ArrayRecord, server_round: int) -> None:
        out = self.cfg.federation.out_dir
        if not out:
            return
        meta = {"round": server_round, "run_id": self.run_id, "encoder": self.cfg.model.encoder}
        base = resolve_encoder(self.cfg.model.encoder)
        adapter = from_array_record(arrays)
        save_adapter(
            adapter,
            self.cfg.model,
            f"{out}/rounds/round-{server_round:03d}",
            base_model=base,
            metadata=meta,
        )
        save_adapter(adapter, self.cfg.model, f"{out}/adapter", base_model=base, metadata=meta)
