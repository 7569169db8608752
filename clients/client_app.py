"""The site's Flower ClientApp (Message API): train, evaluate, and say which platform it is.

Only adapter arrays and a few aggregate numbers leave the site. The replies' metrics (training
loss, validation/test ranking metrics, user counts) are aggregates that DP-SGD does not cover;
README.md ("Privacy guarantee") says so.
"""

from __future__ import annotations

import torch
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.evaluation import evaluate_split
from clients.privacy import PrivacyBudgetExceeded, PrivacyLedger
from clients.site import Site, site_from_node_config
from clients.training import train_round
from shared.adapter import get_adapter_arrays, set_adapter_arrays
from shared.config import FedxrecConfig
from shared.model import Recommender, build_recommender, pick_device
from shared.records import from_array_record, to_array_record

# Error codes of a site's refusal, read by the coordinator.
BUDGET_EXHAUSTED = 4001
SITE_FAILED = 4002

app = ClientApp()


def _setup(msg: Message, context: Context) -> tuple[FedxrecConfig, Site, Recommender]:
    cfg = FedxrecConfig.from_flat(dict(context.run_config), ignore_unknown=True)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    site = site_from_node_config(dict(context.node_config), cfg)
    rec = build_recommender(cfg.model, device=pick_device(cfg.train.device))
    if "arrays" in msg.content.array_records:
        set_adapter_arrays(rec, from_array_record(msg.content["arrays"]))
    return cfg, site, rec


def _refuse(msg: Message, code: int, reason: str) -> Message:
    print(f"fedxrec site refuses: {reason}", flush=True)
    return Message(Error(code=code, reason=reason), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    try:
        cfg, site, rec = _setup(msg, context)
        data = site.load_data(cfg)
        server_round = int(msg.content["config"]["server-round"])
        ledger = None
        if cfg.privacy.enabled:
            ledger = PrivacyLedger.open(
                site.state_dir,
                platform=site.platform,
                num_users=data.num_users,
                delta=cfg.privacy.delta,
                epsilon_budget=cfg.privacy.epsilon,
                accountant=cfg.privacy.accountant,
            )
        result = train_round(
            rec,
            data,
            cfg,
            ledger=ledger,
            run_id=str(context.run_id),
            server_round=server_round,
            rounds_left=cfg.federation.rounds - server_round + 1,
            progress=lambda line: print(f"[fedxrec] {line}", flush=True),
        )
    except PrivacyBudgetExceeded as err:
        return _refuse(msg, BUDGET_EXHAUSTED, str(err))
    except ValueError as err:  # bad data, config, adapter or ledger: the message says the fix
        return _refuse(msg, SITE_FAILED, f"{type(err).__name__}: {err}")
    metrics = MetricRecord(
        {
            "num-examples": result.users,  # FedAvg weight: the platform's trainable users
            "train-loss": result.loss,
            "epsilon": result.epsilon,
            "delta": result.delta,
            "noise-multiplier": result.noise_multiplier,
            "sample-rate": result.sample_rate,
            "steps": result.steps,
            "seconds": result.seconds,
        }
    )
    content = RecordDict({"arrays": to_array_record(get_adapter_arrays(rec)), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    try:
        cfg, site, rec = _setup(msg, context)
        data = site.load_data(cfg)
        config = msg.content["config"]
        split = str(config.get("split", "validation"))
        # The first N users by ID: a fixed sample (the MovieLens platforms name users in random order).
        limit = int(config.get("max-users", 0)) or data.num_users
        metrics = evaluate_split(rec, data, split, users=list(range(min(limit, data.num_users))))
    except ValueError as err:
        return _refuse(msg, SITE_FAILED, f"{type(err).__name__}: {err}")
    metrics["num-examples"] = metrics.pop("users")
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Who this node is: the coordinator labels per-platform results with it."""
    try:
        cfg = FedxrecConfig.from_flat(dict(context.run_config), ignore_unknown=True)
        site = site_from_node_config(dict(context.node_config), cfg)
        data = site.load_data(cfg)
    except ValueError as err:
        return _refuse(msg, SITE_FAILED, f"{type(err).__name__}: {err}")
    info = ConfigRecord(
        {"platform": site.platform, "users": data.num_users, "items": len(data.items)}
    )
    return Message(content=RecordDict({"info": info}), reply_to=msg)
