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
2. per-user gradients of every trainable tensor: the head's by ``torch.func`` (vmap of grad over
   users); in a LoRA step, also the LoRA's, from Opacus' hooks on the encoder rows of the user's
   fresh items, summed per user (clients/federation/examples.py);
3. clip each user's whole gradient to ``max_grad_norm``, sum, add N(0, (σ·clip)²) to every
   coordinate, divide by the expected batch size; Adam.
Every step of a round is one (σ, q) release in the site's ledger; ε is Opacus' accountant over
all of them. Without DP the same losses are averaged and back-propagated as usual.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from opacus import GradSampleModule
from torch import nn
from torch.func import functional_call, grad, vmap

from clients.federation.examples import UserBatch, build_batch, trainable_users
from clients.federation.privacy import PrivacyLedger
from shared.config import FedxrecConfig
from shared.data import PlatformData
from shared.model import Recommender
from shared.records import TrainingRecord

Progress = Callable[[str], None]
__all__ = ["train_round", "trainable_users", "user_losses", "per_user_gradients"]


def _user_loss(
    head_params: dict[str, torch.Tensor],
    fresh: torch.Tensor | None,
    windows: torch.Tensor,
    window_mask: torch.Tensor,
    window_slot: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor,
    seen: torch.Tensor,
    *,
    head: nn.Module,
    item_vectors: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """The loss of one user: the mean over its pairs of the full-catalogue softmax loss."""
    # In a LoRA step the fresh vectors replace their cached copies in the history.
    inputs = (item_vectors, windows, window_mask, fresh, window_slot if fresh is not None else None)
    users = functional_call(head, head_params, inputs)  # [P, d]
    logits = users @ item_vectors.T
    padded = torch.cat([logits, logits.new_zeros(logits.shape[0], 1)], dim=-1)
    logits = padded.scatter(-1, seen, -1e9)[:, :-1]  # the history is not a candidate
    losses = nn.functional.cross_entropy(logits / temperature, targets, reduction="none")
    return (losses * valid).sum() / valid.sum().clamp(min=1.0)


def _fresh_per_user(batch: UserBatch, fresh: torch.Tensor | None) -> torch.Tensor | None:
    """[B, K, d]: each user's fresh vectors (zeros where a user has fewer than K); None if none."""
    if fresh is None:
        return None
    table = torch.cat([fresh, fresh.new_zeros(1, fresh.shape[1])])  # the padding slot's vector
    return table[batch.fresh_slots]


def _loss_args(batch: UserBatch, fresh_per_user: torch.Tensor | None) -> tuple:
    return (
        fresh_per_user,
        batch.windows,
        batch.window_mask,
        batch.window_slot,
        batch.targets,
        batch.valid,
        batch.seen,
    )


def _in_dims(fresh_per_user: torch.Tensor | None) -> tuple:
    return (None, None if fresh_per_user is None else 0, 0, 0, 0, 0, 0, 0)


def _loss_fn(rec: Recommender, item_vectors: torch.Tensor) -> Callable[..., torch.Tensor]:
    def loss(params, *args):
        return _user_loss(
            params,
            *args,
            head=rec.head,
            item_vectors=item_vectors,
            temperature=rec.config.temperature,
        )

    return loss


def encode_fresh(rec: Recommender, data: PlatformData, batch: UserBatch, model: nn.Module):
    """The batch's fresh items, encoded with gradient (one encoder row per fresh item)."""
    if not batch.fresh_rows:
        return None
    texts = [data.item_texts[i] for i in batch.fresh_rows]
    return model(**rec.tokenize(texts, rec.config.max_item_tokens))


def user_losses(
    rec: Recommender,
    data: PlatformData,
    batch: UserBatch,
    item_vectors: torch.Tensor,
    model: nn.Module | None = None,
) -> torch.Tensor:
    """Per-user losses [B], differentiable w.r.t. the head (and the LoRA in a LoRA step)."""
    fresh = _fresh_per_user(batch, encode_fresh(rec, data, batch, model or rec.model))
    params = dict(rec.head.named_parameters())
    return vmap(_loss_fn(rec, item_vectors), in_dims=_in_dims(fresh))(
        params, *_loss_args(batch, fresh)
    )


def per_user_gradients(
    rec: Recommender,
    data: PlatformData,
    batch: UserBatch,
    item_vectors: torch.Tensor,
    hooked: nn.Module | None = None,
) -> tuple[dict[nn.Parameter, torch.Tensor], torch.Tensor]:
    """({parameter: [B, *shape] per-user gradients}, per-user losses [B]).

    ``hooked`` is the encoder wrapped in Opacus' GradSampleModule, needed for a LoRA step.
    """
    fresh = encode_fresh(rec, data, batch, hooked) if batch.fresh_rows else None
    params = {k: p.detach() for k, p in rec.head.named_parameters()}
    per_user = _fresh_per_user(batch, fresh.detach() if fresh is not None else None)
    loss = _loss_fn(rec, item_vectors)

    def loss_and_value(*args):
        value = loss(*args)
        return value, value.detach()

    argnums = (0,) if per_user is None else (0, 1)
    grads, losses = vmap(
        grad(loss_and_value, argnums=argnums, has_aux=True), in_dims=_in_dims(per_user)
    )(params, *_loss_args(batch, per_user))
    head_grads = grads[0]
    out = {p: head_grads[name] for name, p in rec.head.named_parameters()}
    if fresh is not None:
        fresh_grads = grads[1]
        # d(user loss)/d(fresh vector) → through the encoder; Opacus' hooks give each encoder
        # row's gradient, and a user's gradient is the sum over its own rows.
        rows = torch.zeros(len(batch.fresh_rows) + 1, rec.dim, device=fresh.device)
        rows.index_add_(0, batch.fresh_slots.flatten(), fresh_grads.flatten(0, 1))
        fresh.backward(rows[:-1])
        for p in (p for p in rec.model.parameters() if p.requires_grad):
            per_row = p.grad_sample
            summed = torch.zeros(len(batch), *p.shape, device=per_row.device)
            out[p] = summed.index_add_(0, batch.fresh_owner, per_row)
            p.grad_sample, p.grad = None, None
    return out, losses


def privatize_gradients(
    per_user: dict[nn.Parameter, torch.Tensor],
    *,
    max_grad_norm: float,
    noise_multiplier: float,
    expected_batch_size: float,
    generator: torch.Generator | None = None,
) -> dict[nn.Parameter, torch.Tensor]:
    """Clip each user's gradient (all tensors together), sum, add Gaussian noise, average.

    An empty batch (Poisson sampling drew nobody) still gets the noise: DP needs it.
    """
    squares = [(g.flatten(1) ** 2).sum(1) for g in per_user.values()]
    norms = torch.stack(squares).sum(0).sqrt()
    factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    out = {}
    for p, g in per_user.items():
        summed = torch.einsum("b,b...->...", factor, g)
        noise = torch.normal(
            0.0,
            noise_multiplier * max_grad_norm,
            size=summed.shape,
            device=summed.device,
            generator=generator,
        )
        out[p] = (summed + noise) / expected_batch_size
    return out


@dataclass
class DPStep:
    """How one DP step turns per-user gradients into the released gradient."""

    max_grad_norm: float
    noise_multiplier: float
    expected_batch_size: float
    generator: torch.Generator | None = None


def set_gradients(
    rec: Recommender,
    data: PlatformData,
    batch: UserBatch,
    item_vectors: torch.Tensor,
    trained: list[nn.Parameter],
    *,
    dp: DPStep | None,
    hooked: nn.Module | None = None,
) -> torch.Tensor:
    """Set ``.grad`` of every ``trained`` tensor for one step; returns the per-user losses.

    Without DP: the mean of the users' losses, back-propagated. With DP: per-user gradients,
    clipped, summed, noised and divided by the expected batch size (``hooked``: the encoder under
    Opacus' hooks, for a LoRA step).
    """
    if dp is None:
        if not len(batch):
            return torch.zeros(0)
        losses = user_losses(rec, data, batch, item_vectors)
        losses.mean().backward()
        return losses.detach()
    if len(batch):
        per_user, losses = per_user_gradients(rec, data, batch, item_vectors, hooked)
    else:
        per_user = {p: p.new_zeros((0, *p.shape)) for p in trained}
        losses = torch.zeros(0)
    noisy = privatize_gradients(
        {p: per_user[p] for p in trained},
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
    item_vectors: torch.Tensor | None = None,
    steps: int | None = None,
    lora_steps: int | None = None,
) -> TrainingRecord:
    """Train ``rec``'s head (and LoRA) in place for one round; returns what the reply reports.

    ``item_vectors`` are the catalogue's vectors under the round's global model, if the caller has
    them already; they are computed here otherwise. ``steps``/``lora_steps`` override the round's
    (personalisation uses them). The run's σ is chosen at its first round for every step still
    planned: ``rounds_left`` rounds of ``train.steps`` plus ``train.personalize_steps``.
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
    rng = random.Random(f"{tc.seed}:{run_id}:{server_round}:{data.name}")
    noise_rng = torch.Generator(device=rec.device).manual_seed(rng.randrange(2**62))
    if item_vectors is None:
        item_vectors = rec.catalogue_vectors(data.item_texts)  # the round's frozen global model
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
    with ExitStack() as stack:
        hooked = stack.enter_context(encoder_row_gradients(rec)) if pc.enabled and lora_at else None
        for step in range(1, steps + 1):
            chosen = [u for u in users if rng.random() < sample_rate]  # Poisson sampling
            with_lora = step in lora_at
            batch = build_batch(
                data,
                chosen,
                rng,
                positions=tc.positions,
                history_items=rec.config.history_items,
                lora_items=tc.lora_items if with_lora else 0,
            ).to(rec.device)
            optimizer.zero_grad(set_to_none=True)
            trained = head_params + (lora_params if with_lora else [])
            dp = DPStep(pc.max_grad_norm, sigma, batch_size, noise_rng) if pc.enabled else None
            losses = set_gradients(rec, data, batch, item_vectors, trained, dp=dp, hooked=hooked)
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
