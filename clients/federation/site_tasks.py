"""What a site does for the coordinator: train one round, evaluate an adapter.

Free of Flower messages (clients/federation/client_app.py turns messages into these calls and back), so the
Message-API path and the secure-aggregation path share one training implementation. Deployment
starts a new process per message, and imports are most of its cost: the ClientApp imports this
module (torch, transformers, peft) only when a model is needed, so SecAgg+'s key-exchange stages
start fast, and Opacus only where DP-SGD runs.
"""

from __future__ import annotations

import fcntl
import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clients.federation.evaluation import evaluate_split, split_ranks
from clients.federation.site import Site
from shared.adapter import get_adapter_arrays, save_adapter, set_adapter_arrays
from shared.config import FedxrecConfig
from shared.data import PlatformData
from shared.metrics import paired_gain, user_ndcg
from shared.model import Recommender, pick_device, process_recommender, resolve_encoder
from shared.records import PersonalChoice, PersonalizeInstruction, TrainingRecord, TrainInstruction
from shared.whitening import CatalogueMoments, catalogue_moments, sample_rows

Adapter = OrderedDict[str, np.ndarray]
LOCK_FILE = "training.lock"


@dataclass
class TrainedRound:
    adapter: Adapter
    record: TrainingRecord


def load_model(
    cfg: FedxrecConfig, adapter: dict[str, np.ndarray] | Sequence[np.ndarray]
) -> Recommender:
    """The base encoder with the coordinator's adapter, given by name or in state-dict order.

    The encoder is loaded once per process (``process_recommender``); the adapter is set anew.
    """
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    rec = process_recommender(cfg.model, device=pick_device(cfg.train.device))
    if not isinstance(adapter, dict):  # legacy messages carry an unnamed list
        adapter = dict(zip(get_adapter_arrays(rec), adapter, strict=False))
    set_adapter_arrays(rec, adapter)
    return rec


def train_site(
    cfg: FedxrecConfig,
    site: Site,
    adapter: dict[str, np.ndarray] | Sequence[np.ndarray],
    instruction: TrainInstruction,
    *,
    run_id: str,
) -> TrainedRound:
    """One round of DP-SGD on the site's users, spending from its privacy ledger on disk.

    A SuperNode may run ClientApps of several runs at once (a resumed federation while the killed
    one's last message is still being served): one training at a time per site, so no two
    processes read, extend and write the ledger over each other.
    """
    server_round = instruction.server_round
    with _exclusive(site.state_dir / LOCK_FILE):
        print(f"[fedxrec] {site.platform}: training round {server_round}", flush=True)
        rec, _, result = _train(
            cfg,
            site,
            adapter,
            instruction,
            run_id=run_id,
            server_round=server_round,
            rounds_left=cfg.federation.rounds - server_round + 1,
        )
        trained = get_adapter_arrays(rec)
        if site.keep_updates:
            save_adapter(
                trained,
                cfg.model,
                site.state_dir / "updates" / run_id / f"round-{server_round:03d}",
                base_model=resolve_encoder(cfg.model.encoder),
                metadata={"round": server_round, "run_id": run_id, "users": result.users},
            )
        return TrainedRound(trained, result)


def personalize_site(
    cfg: FedxrecConfig,
    site: Site,
    adapter: dict[str, np.ndarray],
    instruction: PersonalizeInstruction,
    *,
    run_id: str,
) -> tuple[TrainingRecord, PersonalChoice, dict[str, dict[str, float]]]:
    """Fine-tune the final global model on the site's own users (DP, from the same budget), keep
    it on the site's disk (``state-dir/personal``, an adapter folder `fedxrec rank` takes) and
    evaluate it on validation and test.

    What it keeps is the mix of the fine-tune and the global model that validates best, and the
    global model itself unless that mix's gain is clear (``PersonalChoice``). The personal model
    never leaves the site; only its metrics go back to the coordinator.
    """
    with _exclusive(site.state_dir / LOCK_FILE):
        print(f"[fedxrec] {site.platform}: personalising the global model", flush=True)
        rec, data, result = _train(
            cfg,
            site,
            adapter,
            instruction,
            run_id=run_id,
            server_round=instruction.server_round,  # the personalisation release
            rounds_left=0,
            steps=cfg.train.personalize_steps,
            lora_steps=0,
        )
        kept, choice = choose_personal_mix(
            rec, data, adapter, get_adapter_arrays(rec), cfg.train.personalize_min_z
        )
        save_adapter(
            kept,
            cfg.model,
            personal_adapter_dir(site),
            base_model=resolve_encoder(cfg.model.encoder),
            metadata={"personalized": True, "run_id": run_id, "users": result.users}
            | choice.to_record(),
        )
        print(
            f"[fedxrec] {site.platform}: keeps mix {choice.mix:g} of its fine-tune (validation "
            f"NDCG@10 gain {choice.validation_gain:+.4f} ± {choice.standard_error:.4f})",
            flush=True,
        )
    users = {"validation": instruction.validation_users, "test": 0}
    return result, choice, _evaluate(rec, data, users)


MIXES = (0.25, 0.5, 0.75, 1.0)  # shares of the fine-tune a site may keep (0: the global model)


def choose_personal_mix(
    rec: Recommender,
    data: PlatformData,
    global_arrays: dict[str, np.ndarray],
    personal_arrays: dict[str, np.ndarray],
    min_z: float,
) -> tuple[Adapter, PersonalChoice]:
    """The mix α·personal + (1 − α)·global with the best validation NDCG@10 over every user of
    the site, if its paired gain over the global model is at least ``min_z`` standard errors;
    else the global model. ``rec`` is left holding what is kept."""

    def mixed(alpha: float) -> Adapter:
        return OrderedDict(
            (k, (alpha * personal_arrays[k] + (1 - alpha) * global_arrays[k]).astype(np.float32))
            for k in personal_arrays
        )

    users = list(range(data.num_users))

    def scores(arrays: Adapter) -> list[float]:
        set_adapter_arrays(rec, arrays)
        vectors = rec.catalogue_vectors(data.item_texts)
        return user_ndcg(split_ranks(rec, data, "validation", users, vectors))

    base = scores(mixed(0.0))
    best, best_scores = 0.0, base
    for alpha in MIXES:
        candidate = scores(mixed(alpha))
        if sum(candidate) > sum(best_scores):
            best, best_scores = alpha, candidate
    gain, error = paired_gain(best_scores, base)
    if best and not gain >= min_z * error:
        best = 0.0
    kept = mixed(best)
    set_adapter_arrays(rec, kept)
    return kept, PersonalChoice(best, gain, error if math.isfinite(error) else 0.0, len(users))


def _train(
    cfg: FedxrecConfig,
    site: Site,
    adapter: dict[str, np.ndarray] | Sequence[np.ndarray],
    instruction: TrainInstruction,
    **round_settings: object,
) -> tuple[Recommender, PlatformData, TrainingRecord]:
    """The site's model and data, trained in place by DP-SGD paid from its ledger."""
    from clients.federation.training import train_round  # Opacus: only where DP-SGD runs

    rec = load_model(cfg, adapter)
    data = site.load_data(cfg)
    ledger = _ledger(cfg, site, data.num_users)
    if ledger is not None and instruction.expected_ledger is not None:
        ledger.check_expected(*instruction.expected_ledger)
    result = train_round(
        rec,
        data,
        cfg,
        ledger=ledger,
        progress=lambda line: print(f"[fedxrec] {line}", flush=True),
        reproducible=site.reproducible_noise,
        **round_settings,  # type: ignore[arg-type]
    )
    return rec, data, result


def personal_adapter_dir(site: Site) -> Path:
    """The site's own model: the last federation's global model, fine-tuned on its users."""
    return site.state_dir / "personal"


def _ledger(cfg: FedxrecConfig, site: Site, num_users: int):
    if not cfg.privacy.enabled:
        return None
    from clients.federation.privacy import PrivacyLedger

    return PrivacyLedger.open(
        site.state_dir,
        platform=site.platform,
        num_users=num_users,
        delta=cfg.privacy.delta,
        epsilon_budget=cfg.privacy.epsilon,
        accountant=cfg.privacy.accountant,
    )


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes, even if we crash
        yield


def describe_catalogue(cfg: FedxrecConfig, data: PlatformData) -> CatalogueMoments:
    """The moments of the site's catalogue text vectors under the base encoder (no LoRA): what
    the coordinator pools into the federation's whitening (shared/whitening.py). Item texts are
    public; no user's data enters them."""
    rec = process_recommender(cfg.model, device=pick_device(cfg.train.device))
    texts = [data.item_texts[i] for i in sample_rows(len(data.items))]
    with rec.model.peft_model.disable_adapter():
        vectors = rec.encode(texts, cfg.model.max_item_tokens)
    return catalogue_moments(vectors)


def evaluate_site(
    cfg: FedxrecConfig, site: Site, adapter: dict[str, np.ndarray], users: dict[str, int]
) -> dict[str, dict[str, float]]:
    """Ranking metrics of ``adapter`` per split, on each split's first N users (0 = all)."""
    return _evaluate(load_model(cfg, adapter), site.load_data(cfg), users)


def _evaluate(
    rec: Recommender, data: PlatformData, users: dict[str, int]
) -> dict[str, dict[str, float]]:
    items = rec.catalogue_vectors(data.item_texts)  # once for every split
    results = {}
    for split, limit in users.items():
        # The first N users by ID: a fixed sample (MovieLens platforms list users in random order).
        chosen = list(range(min(limit or data.num_users, data.num_users)))
        results[split] = evaluate_split(rec, data, split, users=chosen, item_vectors=items)
    return results
