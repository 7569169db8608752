"""The site's Flower ClientApp (Message API): train, evaluate, and say which platform it is.

Training arrives in one of two forms, served by the same training code (clients/federation/site_tasks.py):
- plain FedAvg: a Message-API record ("arrays" + "config"); the reply carries the adapter;
- secure aggregation (SecAgg+): Flower's legacy "fitins" records, routed by ``secure_mod``
  (clients/federation/secure_aggregation.py), which masks the adapter before it leaves the site.

Only adapter arrays and a few aggregate numbers leave the site. The replies' metrics (training
loss, validation/test ranking metrics, user counts) are aggregates that DP-SGD does not cover;
README.md ("Privacy guarantee") says so.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.federation.secure_aggregation import (
    check_clipping_range,
    is_secure_round,
    legacy_fit_reply,
    read_legacy_fit,
    secure_mod,
)
from clients.federation.site import Site, site_from_node_config
from shared.config import FedxrecConfig
from shared.process import set_process_defaults
from shared.records import from_array_record, to_array_record

# Error codes of a site's refusal, read by the coordinator.
BUDGET_EXHAUSTED = 4001
SITE_FAILED = 4002

set_process_defaults()  # before any model loads: offline, no telemetry
app = ClientApp(mods=[secure_mod])


def _site(context: Context) -> tuple[FedxrecConfig, Site]:
    cfg = FedxrecConfig.from_flat(dict(context.run_config), ignore_unknown=True)
    return cfg, site_from_node_config(dict(context.node_config), cfg)


def _refuse(msg: Message, code: int, reason: str) -> Message:
    print(f"fedxrec site refuses: {reason}", flush=True)
    return Message(Error(code=code, reason=reason), reply_to=msg)


def _failed(msg: Message, err: ValueError) -> Message:
    # bad data, config, adapter or ledger: the message says the fix
    return _refuse(msg, SITE_FAILED, f"{type(err).__name__}: {err}")


@app.train()
def train(msg: Message, context: Context) -> Message:
    # torch, transformers, Opacus: imported only by the handlers that need a model
    from clients.federation.privacy import PrivacyBudgetExceeded
    from clients.federation.site_tasks import train_site

    secure = is_secure_round(msg)
    if not secure and bool(msg.content["config"].get("personalize", False)):
        return personalize(msg, context)
    try:
        cfg, site = _site(context)
        if secure:
            adapter, config = read_legacy_fit(msg)
        else:
            adapter, config = from_array_record(msg.content["arrays"]), msg.content["config"]
        expected = None
        if "ledger-releases" in config:  # what this site reported earlier in the federation
            expected = (int(config["ledger-releases"]), float(config["ledger-epsilon"]))
        trained = train_site(
            cfg,
            site,
            adapter,
            server_round=int(config["server-round"]),
            run_id=str(context.run_id),
            expected_ledger=expected,
        )
        if secure:
            check_clipping_range(trained.adapter, cfg.federation.secagg_clipping_range)
    except PrivacyBudgetExceeded as err:
        return _refuse(msg, BUDGET_EXHAUSTED, str(err))
    except ValueError as err:
        return _failed(msg, err)
    report = trained.record.to_record()  # its `users` are the site's FedAvg weight
    if secure:
        return legacy_fit_reply(msg, trained.adapter, trained.record.users, report)
    content = RecordDict(
        {"arrays": to_array_record(trained.adapter), "metrics": MetricRecord(report)}
    )
    return Message(content=content, reply_to=msg)


def personalize(msg: Message, context: Context) -> Message:
    """After the last round: fine-tune the global model on this site's users and keep it here.

    The reply carries no weights, only the spending and the personal model's metrics.
    """
    from clients.federation.privacy import PrivacyBudgetExceeded
    from clients.federation.site_tasks import personalize_site

    try:
        cfg, site = _site(context)
        config = msg.content["config"]
        record, metrics = personalize_site(
            cfg,
            site,
            from_array_record(msg.content["arrays"]),
            run_id=str(context.run_id),
            eval_users=int(config.get("validation-users", 0)),
        )
    except PrivacyBudgetExceeded as err:
        return _refuse(msg, BUDGET_EXHAUSTED, str(err))
    except ValueError as err:
        return _failed(msg, err)
    content = RecordDict(
        {
            "metrics": MetricRecord(record.to_record()),
            **{split: MetricRecord(m) for split, m in metrics.items()},
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the adapter on the requested splits ("validation,test"); one record per split."""
    from clients.federation.site_tasks import evaluate_site

    try:
        cfg, site = _site(context)
        config = msg.content["config"]
        splits = str(config.get("splits", "validation")).split(",")
        sample = int(config.get("validation-users", 0))  # the test split always uses every user
        metrics = evaluate_site(
            cfg,
            site,
            from_array_record(msg.content["arrays"]),
            users={s: sample if s == "validation" else 0 for s in splits},
        )
    except ValueError as err:
        return _failed(msg, err)
    content = RecordDict({split: MetricRecord(m) for split, m in metrics.items()})
    return Message(content=content, reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Who this node is: the coordinator labels per-platform results with it."""
    try:
        cfg, site = _site(context)
        data = site.load_data(cfg)
    except ValueError as err:
        return _failed(msg, err)
    info = ConfigRecord(
        {"platform": site.platform, "users": data.num_users, "items": len(data.items)}
    )
    return Message(content=RecordDict({"info": info}), reply_to=msg)
