"""Local training on one platform: user-level DP-SGD over the sequence head and the encoder's LoRA.

One example is one user (clients/federation/examples.py). Its loss averages that user's (history → next item)
pairs, each scored with a full softmax over the catalogue's vectors, computed once per round by the
round's global model and frozen for the round. The target is scored with its frozen vector like
every other item (encoding it with gradient while negatives stay frozen lets the encoder "win" by
pulling all texts together, which lowers the loss and destroys the ranking). So the loss of a user
depends only on that user's data, the public catalogue and the round's model: no in-batch
negatives, and per-user clipping bounds each user's influence.

A DP step (as Opacus' DPOptimizer does it, with the per-user gradients computed here):
1. Poisson-sample users with rate q = batch_size / users;
2. each sampled user's gradient of every trainable tensor, clipped to ``max_grad_norm`` as a
   whole, summed (clients/federation/gradients.py: in a head step without materialising per-user
   gradients of the transform; in a LoRA step the LoRA's per user from Opacus' hooks);
3. add N(0, (σ·clip)²) to every coordinate, divide by the expected batch size; Adam.
Every step of a round is one (σ, q) release in the site's ledger; ε is Opacus' accountant over
all of them. Without DP the same losses are averaged and back-propagated as usual.
"""

from __future__ import annotations

import math
import random
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import torch
from opacus import GradSampleModule
from torch import nn

from clients.federation.examples import UserBatch, build_batch, trainable_users
from clients.federation.gradients import (
    DPStep,
    add_noise,
    clipped_gradient_sums,
    per_user_gradients,
    privatize_gradients,
    user_losses,
)
from clients.federation.privacy import PrivacyLedger
from shared.config import FedxrecConfig
from shared.data import PlatformData
from shared.model import Recommender
from shared.records import TrainingRecord

Progress = Callable[[str], None]
__all__ = [
    "per_user_gradients",
    "privatize_gradients",
    "train_round",
    "trainable_users",
    "user_losses",
]


def set_gradients(
    rec: Recommender,
    data: PlatformData,
    batch: UserBatch,
    text_vectors: torch.Tensor,
    trained: list[nn.Parameter],
    *,
    dp: DPStep | None,
    hooked: nn.Module | None = None,
) -> torch.Tensor:
    """Set ``.grad`` of every ``trained`` tensor for one step; returns the per-user losses.

    ``text_vectors`` are the catalogue's frozen text vectors. Without DP: the mean of the users'
    losses, back-propagated. With DP: per-user gradients, clipped, summed, noised and divided by
    the expected batch size (``hooked``: the encoder under Opacus' hooks, for a LoRA step).
    """
    if dp is None:
        if not len(batch):
            return torch.zeros(0)
        losses = user_losses(rec, data, batch, text_vectors)
        losses.mean().backward()
        return losses.detach()
    sums, losses = clipped_gradient_sums(
        rec, data, batch, text_vectors, trained, dp.max_grad_norm, hooked
    )
    noisy = add_noise(
        sums,
        max_grad_norm=dp.max_grad_norm,
        noise_multiplier=dp.noise_multiplier,
        expected_batch_size=dp.expected_batch_size,
        generator=dp.generator,
    )
    for p, g in noisy.items():
        p.grad = g
    return losses


@contextmanager
def encoder_row_gradients(rec: Recommender) -> Iterator[nn.Module]:
    """The encoder with Opacus' per-row gradient hooks on its LoRA layers, removed afterwards."""
    hooked = GradSampleModule(rec.model, batch_first=True, loss_reduction="sum")
    try:
        yield hooked
    finally:
        hooked.remove_hooks()
        for p in rec.model.parameters():
            for attr in ("grad_sample", "_current_grad_sample", "_forward_counter"):
                if hasattr(p, attr):
                    delattr(p, attr)


def lora_schedule(steps: int, lora_steps: int) -> set[int]:
    """Which of a round's steps (1-based) also train the LoRA: spread evenly, the last included."""
    return (
        {math.ceil((i + 1) * steps / lora_steps) for i in range(lora_steps)}
        if lora_steps
        else set()
    )


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
    text_vectors: torch.Tensor | None = None,
    steps: int | None = None,
    lora_steps: int | None = None,
    reproducible: bool = False,
) -> TrainingRecord:
    """Train ``rec``'s head (and LoRA) in place for one round; returns what the reply reports.

    ``text_vectors`` are the catalogue's text vectors under the round's global model, if the
    caller has them already; they are computed here otherwise. ``steps``/``lora_steps`` override the round's
    (personalisation uses them). The run's σ is chosen at its first round for every step still
    planned: ``rounds_left`` rounds of ``train.steps`` plus ``train.personalize_steps``.

    The Poisson samples and the Gaussian noise are drawn from the operating system's entropy:
    seeded from the run's config, the run id and the site's name (all known to the coordinator),
    the coordinator could replay them and subtract the noise from the adapter it receives, and the
    guarantee would be void. ``reproducible`` seeds them from those public values instead, for
    benchmarks on one machine, where every party is the experimenter.
    """
    start = time.perf_counter()
    users = trainable_users(data)
    if not users:
        raise ValueError(f"platform '{data.name}' has no user with two or more training items")
    tc, pc = cfg.train, cfg.privacy
    n = len(users)
    batch_size = min(tc.batch_size, n)
    sample_rate = batch_size / n
    steps = tc.steps if steps is None else steps
    lora_steps = min(tc.lora_steps if lora_steps is None else lora_steps, steps)
    if not rec.has_adapter:
        lora_steps = 0
    seed = (
        f"{tc.seed}:{run_id}:{server_round}:{data.name}" if reproducible else secrets.randbits(256)
    )
    rng = random.Random(seed)
    noise_rng = torch.Generator(device=rec.device).manual_seed(rng.randrange(2**62))
    if text_vectors is None:
        text_vectors = rec.catalogue_text_vectors(data.item_texts)  # the round's global model
    head_params = list(rec.head.parameters())
    lora_params = [p for p in rec.model.parameters() if p.requires_grad]
    groups = [{"params": head_params, "lr": tc.learning_rate}]
    if lora_steps:
        groups.append({"params": lora_params, "lr": tc.lora_learning_rate})
    optimizer = torch.optim.Adam(groups)

    sigma, epsilon, delta = 0.0, float("inf"), 0.0
    if pc.enabled:
        if ledger is None:
            raise ValueError("DP training needs the site's privacy ledger")
        planned = tc.steps * rounds_left + tc.personalize_steps
        sigma = pc.noise_multiplier or ledger.noise_for_run(
            run_id, sample_rate, planned, pc.max_noise_multiplier
        )
        epsilon = ledger.reserve(run_id, server_round, sigma, sample_rate, steps)
        delta = ledger.delta
    lora_at = lora_schedule(steps, lora_steps)
    total_loss, examples = 0.0, 0
    report_every = max(1, steps // 5)
    rec.model.train()  # dropout is off in our encoder config; Opacus' hooks need train mode
    rec.head.train()  # the transformer's dropout (model.dropout), on while training only
    with ExitStack() as stack:
        hooked = stack.enter_context(encoder_row_gradients(rec)) if pc.enabled and lora_at else None
        for step in range(1, steps + 1):
            chosen = [u for u in users if rng.random() < sample_rate]  # Poisson sampling
            with_lora = step in lora_at
            batch = build_batch(
                data,
                chosen,
                window=rec.config.history_items,
                lora_items=tc.lora_items if with_lora else 0,
            ).to(rec.device)
            optimizer.zero_grad(set_to_none=True)
            trained = head_params + (lora_params if with_lora else [])
            dp = DPStep(pc.max_grad_norm, sigma, batch_size, noise_rng) if pc.enabled else None
            losses = set_gradients(rec, data, batch, text_vectors, trained, dp=dp, hooked=hooked)
            optimizer.step()
            total_loss += float(losses.detach().sum())
            examples += len(chosen)
            if progress and (step % report_every == 0 or step == steps):
                stage = f"round {server_round}" if rounds_left else "personalisation"
                progress(
                    f"[{data.name}] {stage}: step {step}/{steps}, "
                    f"loss {total_loss / max(examples, 1):.4f}"
                )
    optimizer.zero_grad(set_to_none=True)
    rec.model.eval()
    rec.head.eval()
    return TrainingRecord(
        loss=total_loss / max(examples, 1),
        epsilon=epsilon,
        delta=delta,
        noise_multiplier=sigma,
        sample_rate=sample_rate,
        steps=steps,
        lora_steps=lora_steps,
        users=n,
        examples=examples,
        seconds=time.perf_counter() - start,
        ledger_releases=len(ledger.releases) if pc.enabled and ledger is not None else 0,
    )
