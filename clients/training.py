"""Local training on one platform: one example = one user, DP-SGD with Opacus (hooks mode).

Each example is one user: a random cut of their training history into (history → next item). The
user's history text is encoded with gradients and scored (full softmax) against every catalogue
item's vector, computed once per round by the frozen global model. The loss of an example therefore
depends only on that user's data and public catalogue items (DESIGN.md): no in-batch negatives, so
per-example clipping bounds each user's influence and Opacus' guarantee holds.

The target item is scored with its frozen vector too, like every other item. Encoding it with
gradients while negatives stay frozen lets the encoder "win" by pulling all texts together (user
and positive move, negatives cannot), which lowers the loss and destroys the ranking.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from torch import nn

from clients.dataset import PlatformData
from clients.privacy import PrivacyLedger
from shared.config import FedxrecConfig
from shared.model import Recommender

Progress = Callable[[str], None]


@dataclass
class Batch:
    history_texts: list[str]
    histories: list[list[int]]
    targets: list[int]


@dataclass
class TrainResult:
    loss: float
    examples: int  # users sampled this round, summed over steps
    users: int  # users on the platform that can be trained on
    steps: int
    noise_multiplier: float
    sample_rate: float
    epsilon: float  # spent so far, this round included (inf without DP)
    delta: float
    seconds: float


def trainable_users(data: PlatformData) -> list[int]:
    """Users whose training history has at least one (history → next item) pair."""
    return [u for u in range(data.num_users) if len(data.train_sequence(u)) >= 2]


def make_batch(data: PlatformData, users: list[int], rng: random.Random) -> Batch:
    histories, targets = [], []
    for u in users:
        seq = data.train_sequence(u)
        cut = rng.randrange(1, len(seq))
        histories.append(seq[:cut])
        targets.append(seq[cut])
    return Batch([data.history_text(h) for h in histories], histories, targets)


def example_losses(
    model: nn.Module,
    rec: Recommender,
    data: PlatformData,
    batch: Batch,
    item_vectors: torch.Tensor,
) -> torch.Tensor:
    """Per-example softmax loss over the whole catalogue, shape [batch]."""
    cfg = rec.config
    users = model(**rec.tokenize(batch.history_texts, cfg.max_history_tokens))
    targets = torch.as_tensor(batch.targets, device=users.device)
    logits = users @ item_vectors.T
    seen = torch.zeros_like(logits, dtype=torch.bool)
    for row, history in enumerate(batch.histories):
        seen[row, history] = True
    seen[torch.arange(len(targets)), targets] = False  # an item seen before can still be the next
    logits = logits.masked_fill(seen, float("-inf"))
    return nn.functional.cross_entropy(logits / cfg.temperature, targets, reduction="none")


def privatize(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: torch.utils.data.DataLoader,
    noise_multiplier: float,
    max_grad_norm: float,
    accountant: str = "prv",
) -> tuple[nn.Module, torch.optim.Optimizer, torch.utils.data.DataLoader]:
    """Opacus, hooks mode, Poisson sampling: the one place DP-SGD is wired."""
    engine = PrivacyEngine(accountant=accountant)
    return engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode="hooks",
    )


def release_dp_state(model: nn.Module, params: list[torch.nn.Parameter]) -> None:
    """Take Opacus' hooks and per-sample buffers off, leaving a plain model."""
    model.remove_hooks()
    for p in params:
        for attr in ("grad_sample", "_current_grad_sample", "summed_grad"):
            if hasattr(p, attr):
                delattr(p, attr)


def train_round(
    rec: Recommender,
    data: PlatformData,
    cfg: FedxrecConfig,
    *,
    ledger: PrivacyLedger | None,
    run_id: str = "local",
    server_round: int = 1,
    rounds_left: int = 1,
    progress: Progress | None = None,
    item_vectors: torch.Tensor | None = None,
) -> TrainResult:
    """Train ``rec``'s adapter in place for one round; returns what the reply reports.

    ``item_vectors`` are the catalogue's vectors under the round's global model, if the caller
    has them already (the site caches them); they are computed here otherwise.
    """
    start = time.perf_counter()
    users = trainable_users(data)
    if not users:
        raise ValueError(f"platform '{data.name}' has no user with two or more training items")
    tc, pc = cfg.train, cfg.privacy
    n = len(users)
    batch_size = min(tc.batch_size, n)
    sample_rate = batch_size / n
    steps = max(1, math.ceil(tc.local_epochs * n / batch_size))
    rng = random.Random(f"{tc.seed}:{run_id}:{server_round}:{data.name}")
    torch.manual_seed(rng.randrange(2**31))

    if item_vectors is None:
        item_vectors = rec.encode_items(data.item_texts)  # the round's frozen global model
    params = [p for p in rec.model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=tc.learning_rate)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.as_tensor(users)), batch_size=batch_size, shuffle=True
    )
    model: nn.Module = rec.model
    model.train()  # dropout is off in our encoder config; Opacus' hooks need train mode
    sigma, epsilon, delta = 0.0, float("inf"), 0.0
    if pc.enabled:
        if ledger is None:
            raise ValueError("DP training needs the site's privacy ledger")
        sigma = pc.noise_multiplier or ledger.noise_for_run(run_id, sample_rate, steps, rounds_left)
        epsilon = ledger.reserve(run_id, server_round, sigma, sample_rate, steps)
        delta = ledger.delta
        model, optimizer, loader = privatize(
            rec.model, optimizer, loader, sigma, pc.max_grad_norm, ledger.accountant
        )
    total_loss, examples, done = 0.0, 0, 0
    report_every = max(1, steps // 10)
    try:
        while done < steps:
            for (batch_users,) in loader:
                optimizer.zero_grad(set_to_none=True)
                if len(batch_users) == 0:
                    # Poisson sampling drew nobody: the step must still add noise (DP needs it).
                    for p in params:
                        p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
                else:
                    batch = make_batch(data, batch_users.tolist(), rng)
                    losses = example_losses(model, rec, data, batch, item_vectors)
                    losses.mean().backward()
                    total_loss += float(losses.detach().sum())
                    examples += len(batch_users)
                optimizer.step()
                done += 1
                if progress and (done % report_every == 0 or done == steps):
                    progress(
                        f"[{data.name}] round {server_round}: step {done}/{steps}, "
                        f"loss {total_loss / max(examples, 1):.4f}"
                    )
                if done >= steps:
                    break
    finally:
        if pc.enabled:
            release_dp_state(model, params)
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    return TrainResult(
        loss=total_loss / max(examples, 1),
        examples=examples,
        users=n,
        steps=steps,
        noise_multiplier=sigma,
        sample_rate=sample_rate,
        epsilon=epsilon,
        delta=delta,
        seconds=time.perf_counter() - start,
    )
