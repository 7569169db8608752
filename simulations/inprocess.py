"""The same federation as the Flower app, in one process: for experiments and baselines.

It calls the very functions the ClientApp calls (``train_round``, ``evaluate_split``) and the
coordinator's own FedAvg (``server.aggregation.fedavg``, weighted by trainable users), so figures
match the Flower path up to randomness; it only skips the messaging. ``fedxrec simulate`` is the product path; this is what
``fedxrec compare`` uses to run many methods and seeds in reasonable time.
"""

from __future__ import annotations

import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from clients.federation.evaluation import evaluate_split
from clients.federation.privacy import PrivacyBudgetExceeded, PrivacyLedger
from clients.federation.training import train_round
from server.aggregation import fedavg
from shared.adapter import get_adapter_arrays, set_adapter_arrays
from shared.config import FedxrecConfig
from shared.data import PlatformData
from shared.model import Recommender

Arrays = OrderedDict[str, np.ndarray]
Log = Callable[[str], None]


def federate(
    rec: Recommender,
    platforms: list[PlatformData],
    cfg: FedxrecConfig,
    *,
    state_dir: str | Path | None = None,
    run_id: str = "inprocess",
    on_round: Callable[[int, dict[str, dict[str, float]]], None] | None = None,
    log: Log = print,
) -> tuple[Arrays, dict[str, Arrays]]:
    """FedAvg over ``platforms`` for ``cfg.federation.rounds`` rounds, then (when
    ``train.personalize_steps`` > 0) each platform's fine-tune of the global model, paid from the
    same ledger. Returns (the global adapter, each platform's personal adapter); ``rec`` is left
    with the global adapter loaded.

    ``on_round(r, train_metrics)`` is called after each round with the global adapter loaded.
    A single platform makes this local-only training; pooled data makes it centralized.
    """
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(state_dir or tmp)
        ledgers = {
            p.name: PrivacyLedger.open(
                state / p.name,
                platform=p.name,
                num_users=p.num_users,
                delta=cfg.privacy.delta,
                epsilon_budget=cfg.privacy.epsilon,
                accountant=cfg.privacy.accountant,
            )
            if cfg.privacy.enabled
            else None
            for p in platforms
        }
        global_arrays = get_adapter_arrays(rec)
        rounds = cfg.federation.rounds
        for server_round in range(1, rounds + 1):
            updates, metrics = [], {}
            for data in platforms:
                set_adapter_arrays(rec, global_arrays)
                try:
                    result = train_round(
                        rec,
                        data,
                        cfg,
                        ledger=ledgers[data.name],
                        run_id=run_id,
                        server_round=server_round,
                        rounds_left=rounds - server_round + 1,
                    )
                except PrivacyBudgetExceeded as err:
                    log(f"[fedxrec] {err}")
                    continue
                updates.append((get_adapter_arrays(rec), float(result.users)))
                metrics[data.name] = result.to_record()
            if updates:
                global_arrays = fedavg(updates)
            set_adapter_arrays(rec, global_arrays)
            if on_round:
                on_round(server_round, metrics)
        personal: dict[str, Arrays] = {}
        for data in platforms if cfg.train.personalize_steps else []:
            set_adapter_arrays(rec, global_arrays)
            try:
                train_round(
                    rec,
                    data,
                    cfg,
                    ledger=ledgers[data.name],
                    run_id=run_id,
                    server_round=rounds + 1,
                    rounds_left=0,
                    steps=cfg.train.personalize_steps,
                    lora_steps=0,
                )
            except PrivacyBudgetExceeded as err:
                log(f"[fedxrec] {err}")
                continue
            personal[data.name] = get_adapter_arrays(rec)
        set_adapter_arrays(rec, global_arrays)
        return global_arrays, personal


def evaluate_all(
    rec: Recommender, platforms: list[PlatformData], split: str
) -> dict[str, dict[str, float]]:
    return {p.name: evaluate_split(rec, p, split) for p in platforms}
