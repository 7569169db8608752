"""The coordinator's Flower ServerApp: FedAvg over the platforms' LoRA adapters.

Before round 0 each site reports the moments of its public catalogue's text vectors; their pooled
PCA whitening goes into the initial adapter (shared/whitening.py) and never changes. Round 0
evaluates the untrained model (zero-shot). Each round sends the global adapter to every
platform, averages the adapters that come back (weighted by the platforms' user counts), saves the
new global adapter (peft format), the round's metrics and a checkpoint, then evaluates it on every
platform's validation split. The end evaluates zero-shot and federated adapters on the test split.

``federation.secure_aggregation=true`` averages under SecAgg+ instead (server/aggregation.py): the
coordinator then only ever sees the sum, never one site's adapter. ``federation.resume=true``
continues a stopped federation from its checkpoint in ``federation.out_dir``
(server/checkpoint.py). A site that stops answering does not stop a round while
``federation.min_nodes`` sites still reply within ``federation.round_timeout``.
"""

from __future__ import annotations

import time
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from server.aggregation import SecureAggregation, TrainOutcome, fedavg_round
from server.checkpoint import Checkpoint, CheckpointError
from server.run_log import METRICS_FILE, FederationLog
from shared.adapter import (
    adapter_hash,
    initial_adapter,
    read_adapter,
    save_adapter,
    set_adapter_arrays,
    with_fixed,
)
from shared.config import ConfigError, FedxrecConfig
from shared.model import check_outputs, process_recommender, resolve_encoder
from shared.process import keep_freed_memory, set_process_defaults
from shared.records import (
    PERSONALIZE,
    EvaluateInstruction,
    PersonalChoice,
    PersonalizeInstruction,
    SiteInfo,
    TrainingRecord,
    TrainInstruction,
    array_record_nbytes,
    from_array_record,
    refusal_text,
    to_array_record,
)
from shared.whitening import (
    CatalogueMoments,
    WhiteningError,
    pooled_moments,
    whitening_arrays,
)

set_process_defaults()  # before any model loads: offline, no telemetry
keep_freed_memory()  # a training process (shared/process.py)
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = FedxrecConfig.from_flat(dict(context.run_config), ignore_unknown=True)
    Coordinator(grid, cfg, context).run()


class Coordinator:
    """One federation: the round loop, read top to bottom in ``run``."""

    def __init__(self, grid: Grid, cfg: FedxrecConfig, context: Context) -> None:
        self.grid, self.cfg, self.context = grid, cfg, context
        self.run_id = str(context.run_id)
        fed = cfg.federation
        self.expected = fed.platforms or len(
            [n for n in cfg.simulation.platform_names.split(",") if n]
        )
        if not self.expected:
            raise ConfigError("set federation.platforms to the number of sites that take part")
        self.min_replies = fed.min_nodes or self.expected
        if fed.secure_aggregation and self.min_replies < 2:
            raise ConfigError("secure aggregation needs at least 2 sites per round (min_nodes)")
        self.log = FederationLog.start(cfg, self.run_id)
        self.nodes: list[int] = []
        self.platform_of: dict[int, str] = {}
        self.ledgers: dict[str, tuple[int, float]] = {}  # platform -> (releases, ε) it reported
        self.catalogues: dict[str, CatalogueMoments] = {}  # platform -> its catalogue's moments
        self.secure: SecureAggregation | None = None

    # ---- the federation ------------------------------------------------------------------
    def run(self) -> None:
        fed = self.cfg.federation
        self._refresh_nodes(wait=True)
        if fed.secure_aggregation:
            self.secure = SecureAggregation(fed, self.context, self._max_weight())
        first, arrays, zero_shot_test = self._resume() if fed.resume else self._start()
        final_test = None
        for server_round in range(first, fed.rounds + 1):
            if server_round > first:
                self._refresh_nodes()  # sites that joined, came back or left since
            arrays, final_test = self._round(server_round, arrays)
            self._checkpoint(server_round, arrays, zero_shot_test)
            self.log.print_round(server_round)
        if not self.log.trained():
            self.log.write(fed.out_dir)
            raise RuntimeError(
                "no site trained in any round, so there is no global model (no adapter/ was "
                f"written); the sites said: {self.log.refusals() or 'nothing (no reply)'}"
            )
        if final_test is None:  # resumed after the last round: nothing trained, test it now
            final_test = self._evaluate(arrays, ("test",))["test"]
        self.log.record_final(zero_shot_test, final_test)
        if self.cfg.train.personalize_steps:
            self._personalize(arrays)
        self.log.write(fed.out_dir)

    def _round(self, server_round: int, arrays: ArrayRecord) -> tuple[ArrayRecord, dict | None]:
        """Train, aggregate, save, validate (and test, after the last round); the same
        bookkeeping whichever aggregation ran."""
        start = time.perf_counter()
        outcome = self._train(arrays, server_round)
        if outcome.arrays is not None:  # the sites send what they train: the whitening goes back
            outcome.arrays = to_array_record(
                with_fixed(from_array_record(outcome.arrays), from_array_record(arrays))
            )
        self.log.record_training(
            server_round,
            self._by_platform(outcome.metrics),
            self._by_platform(outcome.refused),
            self._by_platform(outcome.bytes_up),
        )
        if outcome.arrays is not None and self._sane(outcome.arrays, server_round):
            arrays = outcome.arrays
        else:
            print(
                f"[fedxrec] round {server_round}: fewer than the {self.min_replies} sites "
                "needed trained; the global adapter is unchanged this round",
                flush=True,
            )
        self.nodes = [n for n in self.nodes if n not in outcome.silent]
        self._save(arrays, server_round)
        last = server_round == self.cfg.federation.rounds  # the final adapter: test it now too
        evaluation = self._evaluate(arrays, ("validation", "test") if last else ("validation",))
        self.log.record_evaluation(server_round, evaluation["validation"])
        entry = self.log.rounds[-1]
        entry["seconds"] = round(time.perf_counter() - start, 2)
        entry["bytes_down_per_site"] = array_record_nbytes(arrays)
        self.log.write(self.cfg.federation.out_dir)
        return arrays, evaluation.get("test")

    def _sane(self, arrays: ArrayRecord, server_round: int) -> bool:
        """Whether the new global model scores a probe batch with finite, sane scores; a broken
        aggregate is not accepted (the previous global model stays)."""
        probe = process_recommender(self.cfg.model)
        try:
            set_adapter_arrays(probe, from_array_record(arrays))
            check_outputs(probe)
        except ValueError as err:  # AdapterError, ModelOutputError
            print(
                f"[fedxrec] round {server_round}: the aggregated model is refused ({err}); the "
                "global model stays as it was",
                flush=True,
            )
            return False
        return True

    def _start(self) -> tuple[int, ArrayRecord, dict]:
        """Round 0: the initial adapter with the whitening of the sites' pooled catalogues,
        evaluated zero-shot on validation and test."""
        if not self.catalogues:
            raise RuntimeError(
                "no site reported its catalogue, so the model's whitening cannot be set; the "
                "sites' errors are above"
            )
        try:
            whitening = whitening_arrays(pooled_moments(list(self.catalogues.values())))
        except WhiteningError as err:
            raise RuntimeError(f"the sites' catalogues give no whitening: {err}") from None
        initial = initial_adapter(self.cfg.model, self.cfg.federation.seed, whitening)
        arrays = to_array_record(initial)
        zero_shot = self._evaluate(arrays, ("validation", "test"))
        self.log.record_evaluation(0, zero_shot["validation"])
        self._save(arrays, 0)
        self.log.write(self.cfg.federation.out_dir)
        self._checkpoint(0, arrays, zero_shot["test"])
        return 1, arrays, zero_shot["test"]

    def _resume(self) -> tuple[int, ArrayRecord, dict]:
        """Continue after the checkpoint's round, with its adapter, metrics and baseline."""
        out = Path(self.cfg.federation.out_dir)
        ckpt = Checkpoint.read(out)
        model = {k: v for k, v in self.cfg.to_flat().items() if k.startswith("model.")}
        if ckpt.model != model:
            changed = sorted(k for k in model if ckpt.model.get(k) != model[k])
            raise ConfigError(
                f"cannot resume {out}: its adapter was trained with other settings ({changed}); "
                "resume with the model.* settings of the stopped federation"
            )
        adapter = read_adapter(out / ckpt.adapter, self.cfg.model)
        if adapter_hash(adapter) != ckpt.adapter_hash:
            raise CheckpointError(f"{out / ckpt.adapter} is not the adapter the checkpoint names")
        self.ledgers = {name: (int(n), float(e)) for name, (n, e) in ckpt.ledgers.items()}
        previous = FederationLog.read(out)
        previous.platforms.update(self.log.platforms)
        previous.resume_after(ckpt.round, self.run_id, self.cfg.to_flat())
        self.log = previous
        print(
            f"[fedxrec] resuming {out} after round {ckpt.round} of {self.cfg.federation.rounds}",
            flush=True,
        )
        return ckpt.round + 1, to_array_record(adapter), ckpt.zero_shot_test

    def _personalize(self, arrays: ArrayRecord) -> None:
        """Each site fine-tunes the final global model on its own users and keeps the result;
        the replies carry only the spending and the personal models' metrics."""
        messages = []
        for node in self.nodes:
            instruction = PersonalizeInstruction(
                server_round=self.cfg.federation.rounds + 1,
                validation_users=self.cfg.federation.eval_users,
                **self._ledger_shown(node),
            )
            content = RecordDict(
                {"arrays": arrays, "config": ConfigRecord(instruction.to_record())}
            )
            messages.append(Message(content, dst_node_id=node, message_type=PERSONALIZE))
        replies = self.grid.send_and_receive(messages, timeout=self.cfg.federation.round_timeout)
        results: dict[str, tuple[TrainingRecord, PersonalChoice, dict]] = {}
        for m in replies:
            name = self._name(m.metadata.src_node_id)
            if m.has_error():
                why = refusal_text(m.error.code, m.error.reason)
                print(f"[fedxrec] {name} did not personalise ({why})", flush=True)
                continue
            splits = {
                part: {k: float(v) for k, v in m.content[part].items()}
                for part in ("validation", "test")
            }
            record = TrainingRecord.from_record(m.content["metrics"])
            results[name] = (record, PersonalChoice.from_record(m.content["choice"]), splits)
        self.log.record_personalized(results)
        for name, (record, choice, splits) in sorted(results.items()):
            print(
                f"[fedxrec] {name}: personalised model kept on the site (mix {choice.mix:g}); "
                f"test NDCG@10 {splits['test']['ndcg@10']:.4f}, ε {record.epsilon:.2f}",
                flush=True,
            )

    def _ledger_shown(self, node: int) -> dict[str, float]:
        """What ``node``'s ledger showed when it last reported (nothing before its first)."""
        name = self._name(node)
        if name not in self.ledgers:
            return {}
        releases, epsilon = self.ledgers[name]
        return {"ledger_releases": releases, "ledger_epsilon": epsilon}

    def _max_weight(self) -> float:
        """SecAgg+ scales each site's adapter by users / max_weight: the largest platform."""
        if self.cfg.federation.secagg_max_weight:
            return self.cfg.federation.secagg_max_weight
        if not self.log.platforms:
            raise RuntimeError("no site said which platform it is: nothing to aggregate")
        return float(max(p["users"] for p in self.log.platforms.values()))

    def _train(self, arrays: ArrayRecord, server_round: int) -> TrainOutcome:
        # Each site is told what its ledger showed when it last reported: a site whose ledger
        # shows less (deleted, rolled back) refuses rather than spend its budget again.
        instructions = {
            n: TrainInstruction(server_round=server_round, **self._ledger_shown(n))
            for n in self.nodes
        }
        if self.secure is not None:
            outcome = self.secure.round(
                self.grid, arrays, instructions, min_replies=self.min_replies
            )
        else:
            outcome = fedavg_round(
                self.grid,
                arrays,
                instructions,
                timeout=self.cfg.federation.round_timeout,
                min_replies=self.min_replies,
            )
        for node, record in outcome.metrics.items():
            if record.ledger_releases:
                self.ledgers[self._name(node)] = (record.ledger_releases, record.epsilon)
        return outcome

    # ---- the sites -----------------------------------------------------------------------
    def _refresh_nodes(self, wait: bool = False) -> None:
        """The connected nodes; ask new ones which platform they are."""
        deadline = time.monotonic() + self.cfg.federation.round_timeout
        while len(nodes := sorted(self.grid.get_node_ids())) < self.expected and wait:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"only {len(nodes)} of {self.expected} sites connected within "
                    f"{self.cfg.federation.round_timeout:.0f}s"
                )
            time.sleep(1)
        self.nodes = nodes
        new = [n for n in nodes if n not in self.platform_of]
        if new:
            self._ask_platforms(new)

    def _ask_platforms(self, nodes: list[int]) -> None:
        messages = [
            Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes
        ]
        for m in self.grid.send_and_receive(messages, timeout=self.cfg.federation.round_timeout):
            node = m.metadata.src_node_id
            if m.has_error():
                why = refusal_text(m.error.code, m.error.reason)
                print(f"[fedxrec] site {node} failed to start ({why})", flush=True)
                continue
            info = SiteInfo.from_record(m.content["info"])
            try:
                moments = CatalogueMoments.from_arrays(from_array_record(m.content["catalogue"]))
            except (KeyError, WhiteningError) as err:
                print(f"[fedxrec] site {node} sent no usable catalogue moments ({err})", flush=True)
                continue
            self.platform_of[node] = info.platform
            self.catalogues[info.platform] = moments
            self.log.record_platform(info.platform, info.users, info.items)

    def _name(self, node: int) -> str:
        return self.platform_of.get(node, f"node-{node}")

    def _by_platform(self, per_node: dict) -> dict:
        return {self._name(node): value for node, value in per_node.items()}

    def _evaluate(
        self, arrays: ArrayRecord, splits: tuple[str, ...]
    ) -> dict[str, dict[str, dict[str, float]]]:
        """Every responsive site evaluates ``arrays``: split -> platform -> metrics."""
        instruction = EvaluateInstruction(splits, self.cfg.federation.eval_users)
        content = RecordDict({"arrays": arrays, "config": ConfigRecord(instruction.to_record())})
        messages = [
            Message(content, dst_node_id=n, message_type=MessageType.EVALUATE) for n in self.nodes
        ]
        replies = self.grid.send_and_receive(messages, timeout=self.cfg.federation.round_timeout)
        results: dict[str, dict[str, dict[str, float]]] = {split: {} for split in splits}
        for m in replies:
            name = self._name(m.metadata.src_node_id)
            if m.has_error():
                why = refusal_text(m.error.code, m.error.reason)
                print(f"[fedxrec] {name} could not evaluate ({why})", flush=True)
                continue
            for split in splits:
                results[split][name] = {k: float(v) for k, v in m.content[split].items()}
        return results

    # ---- what survives the process -------------------------------------------------------
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
        if self.log.trained():  # adapter/ is always a trained global model, never the initial one
            save_adapter(adapter, self.cfg.model, f"{out}/adapter", base_model=base, metadata=meta)

    def _checkpoint(self, server_round: int, arrays: ArrayRecord, zero_shot_test: dict) -> None:
        """Written last, after the round's adapter and metrics: it names only complete rounds."""
        out = self.cfg.federation.out_dir
        if not out:
            return
        fed, flat = self.cfg.federation, self.cfg.to_flat()
        strategy = {
            "name": "secagg+fedavg" if fed.secure_aggregation else "fedavg",
            "weighted_by": "users",  # TrainingRecord.users: the site's trainable users
            "min_replies": self.min_replies,
            **({"secagg": self.secure.settings()} if self.secure is not None else {}),
        }
        run_ids = [self.log.run_id] + [r["run_id"] for r in self.log.resumed]
        Checkpoint(
            round=server_round,
            adapter=f"rounds/round-{server_round:03d}",
            adapter_hash=adapter_hash(from_array_record(arrays)),
            metrics=METRICS_FILE,
            strategy=strategy,
            model={k: v for k, v in flat.items() if k.startswith("model.")},
            zero_shot_test=zero_shot_test,
            run_ids=run_ids,
            ledgers={name: list(v) for name, v in self.ledgers.items()},
        ).write(out)
