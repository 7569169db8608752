"""The site's Flower ClientApp (Message API): train, personalise, evaluate, say which platform it is.

Thin handlers: each turns a message into one call of clients/federation/site_tasks.py and its
result into the reply. The message contents are the typed records of shared/records.py.

Training arrives in one of two forms, served by the same training code:
- plain FedAvg: a Message-API record ("arrays" + a ``TrainInstruction``); the reply carries the
  adapter;
- secure aggregation (SecAgg+): Flower's legacy "fitins" records, routed by ``secure_mod``
  (clients/federation/secure_aggregation.py), which masks the adapter before it leaves the site.

Only adapter arrays and a few aggregate numbers leave the site. The replies' metrics (training
loss, validation/test ranking metrics, user counts) are aggregates that DP-SGD does not cover;
README.md ("Privacy guarantee") says so. A refusal is an error reply whose code is a
``SiteRefusal`` (the coordinator reports it by name).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.federation.ledger_file import PrivacyBudgetExceeded
from clients.federation.secure_aggregation import (
    check_clipping_range,
    is_secure_round,
    legacy_fit_reply,
    read_legacy_fit,
    secure_mod,
)
from clients.federation.site import Site, site_from_node_config
from shared.config import FedxrecConfig
from shared.process import keep_freed_memory, set_process_defaults
from shared.records import (
    EvaluateInstruction,
    PersonalizeInstruction,
    SiteInfo,
    SiteRefusal,
    TrainInstruction,
    from_array_record,
    to_array_record,
)

set_process_defaults()  # before any model loads: offline, no telemetry
keep_freed_memory()  # a training process (shared/process.py)
app = ClientApp(mods=[secure_mod])


def _site(context: Context) -> tuple[FedxrecConfig, Site]:
    cfg = FedxrecConfig.from_flat(dict(context.run_config), ignore_unknown=True)
    return cfg, site_from_node_config(dict(context.node_config), cfg)


def _answer(msg: Message, task: Callable[[], RecordDict]) -> Message:
    """The reply to ``msg``: ``task``'s records, or the site's refusal with its reason."""
    try:
        return Message(content=task(), reply_to=msg)
    except PrivacyBudgetExceeded as err:
        code, reason = SiteRefusal.BUDGET_EXHAUSTED, str(err)
    except ValueError as err:  # bad data, config, adapter, ledger or message: the fix is said
        code, reason = SiteRefusal.SITE_FAILED, f"{type(err).__name__}: {err}"
    print(f"fedxrec site refuses: {reason}", flush=True)
    return Message(Error(code=int(code), reason=reason), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of DP training from the message's global adapter; the reply carries the
    trained tensors (masked, under SecAgg+; not the fixed whitening, which the coordinator set)
    and the round's ``TrainingRecord``."""
    # torch, transformers, Opacus: imported only by the handlers that need a model
    from clients.federation.site_tasks import train_site
    from shared.adapter import trained_arrays

    secure = is_secure_round(msg)

    def task() -> RecordDict:
        cfg, site = _site(context)
        if secure:
            adapter, config = read_legacy_fit(msg)
            instruction = TrainInstruction.from_record(config)
        else:
            adapter = from_array_record(msg.content["arrays"])
            instruction = TrainInstruction.from_record(msg.content["config"])
        trained = train_site(cfg, site, adapter, instruction, run_id=str(context.run_id))
        report = trained.record.to_record()  # its `users` are the site's FedAvg weight
        update = trained_arrays(trained.adapter)  # the fixed whitening stays: nothing to add
        if secure:
            check_clipping_range(update, cfg.federation.secagg_clipping_range)
            return legacy_fit_reply(update, trained.record.users, report)
        return RecordDict({"arrays": to_array_record(update), "metrics": MetricRecord(report)})

    return _answer(msg, task)


@app.train("personalize")
def personalize(msg: Message, context: Context) -> Message:
    """After the last round: fine-tune the global model on this site's users and keep it here.

    The reply carries no weights, only the spending, which mix of the fine-tune the site kept
    (``PersonalChoice``) and the kept model's metrics.
    """
    from clients.federation.site_tasks import personalize_site

    def task() -> RecordDict:
        cfg, site = _site(context)
        instruction = PersonalizeInstruction.from_record(msg.content["config"])
        adapter = from_array_record(msg.content["arrays"])
        record, choice, metrics = personalize_site(
            cfg, site, adapter, instruction, run_id=str(context.run_id)
        )
        splits = {split: MetricRecord(m) for split, m in metrics.items()}
        return RecordDict(
            {
                "metrics": MetricRecord(record.to_record()),
                "choice": MetricRecord(choice.to_record()),
                **splits,
            }
        )

    return _answer(msg, task)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the message's adapter on the instruction's splits; one record per split."""
    from clients.federation.site_tasks import evaluate_site

    def task() -> RecordDict:
        cfg, site = _site(context)
        instruction = EvaluateInstruction.from_record(msg.content["config"])
        adapter = from_array_record(msg.content["arrays"])
        metrics = evaluate_site(cfg, site, adapter, instruction.users())
        return RecordDict({split: MetricRecord(m) for split, m in metrics.items()})

    return _answer(msg, task)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Who this node is (the coordinator labels per-platform results with it) and the moments of
    its public catalogue's text vectors (the coordinator pools them into the whitening)."""
    from clients.federation.site_tasks import describe_catalogue

    def task() -> RecordDict:
        cfg, site = _site(context)
        data = site.load_data(cfg)
        info = SiteInfo(platform=site.platform, users=data.num_users, items=len(data.items))
        moments = describe_catalogue(cfg, data).to_arrays()
        return RecordDict(
            {
                "info": ConfigRecord(info.to_record()),
                "catalogue": to_array_record(moments, dtype=np.float64),
            }
        )

    return _answer(msg, task)
