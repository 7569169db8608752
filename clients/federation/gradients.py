"""User-level DP gradients: each user's gradient of the head (and the LoRA), clipped, summed and
noised.

One example is one user: its loss averages, over every slot of its input, the full-softmax
cross-entropy of the next item over the platform's catalogue (clients/federation/examples.py). The
catalogue's item vectors come from the trainable adaptor over the round's frozen text vectors, so a
user's loss depends on the adaptor through its own history *and* through the whole (public)
catalogue it is scored against. ``torch.func`` takes each user's gradient of that loss, both paths
included (vmap of grad): Opacus' hooks would see the catalogue's rows as a batch and give per-row,
not per-user, gradients. In a LoRA step the user's fresh text vectors are inputs of the same
function; their per-user gradients flow back through the encoder under Opacus' hooks, one encoder
row per fresh item, summed per user.

Users are taken in chunks (``LOGITS_PER_CHUNK``), so the [users, slots, items] logits of a large
catalogue never sit in memory at once; each chunk's gradients are clipped and summed before the
next.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from clients.federation.examples import NO_TARGET, UserBatch
from shared.data import PlatformData
from shared.model import Recommender

LOGITS_PER_CHUNK = 1 << 24  # [users, slots, items] logits of one chunk of users (64 MiB)
ADAPTOR = "adaptor."


def _user_loss(
    params: dict[str, torch.Tensor],
    fresh: torch.Tensor | None,
    rows: torch.Tensor,
    mask: torch.Tensor,
    input_slot: torch.Tensor,
    targets: torch.Tensor,
    *,
    head: nn.Module,
    text_vectors: torch.Tensor,
) -> torch.Tensor:
    """The loss of one user: the mean over its slots of the full-catalogue softmax loss."""
    adaptor = {k[len(ADAPTOR) :]: v for k, v in params.items() if k.startswith(ADAPTOR)}
    catalogue = functional_call(head.adaptor, adaptor, (text_vectors,))  # [I, d]
    inputs = catalogue[rows]
    if fresh is not None:  # in a LoRA step the fresh text vectors replace their cached copies
        fresh_items = functional_call(head.adaptor, adaptor, (fresh,))
        taken = (input_slot >= 0).unsqueeze(-1)
        inputs = torch.where(taken, fresh_items[input_slot.clamp(min=0)], inputs)
    users = functional_call(head, params, (inputs[None], mask[None]), {"every_slot": True})[0]
    losses = nn.functional.cross_entropy(
        users @ catalogue.T, targets, ignore_index=NO_TARGET, reduction="sum"
    )
    return losses / (targets != NO_TARGET).sum().clamp(min=1)


def _fresh_per_user(batch: UserBatch, fresh: torch.Tensor | None) -> torch.Tensor | None:
    """[B, K, D]: each user's fresh text vectors (zeros where a user has fewer than K)."""
    if fresh is None:
        return None
    table = torch.cat([fresh, fresh.new_zeros(1, fresh.shape[1])])  # the padding slot's vector
    return table[batch.fresh_slots]


def _loss_args(batch: UserBatch, fresh_per_user: torch.Tensor | None) -> tuple:
    return (fresh_per_user, batch.rows, batch.mask, batch.input_slot, batch.targets)


def _in_dims(fresh_per_user: torch.Tensor | None) -> tuple:
    return (None, None if fresh_per_user is None else 0, 0, 0, 0, 0)


def _loss_fn(rec: Recommender, text_vectors: torch.Tensor) -> Callable[..., torch.Tensor]:
    def loss(params, *args):
        return _user_loss(params, *args, head=rec.head, text_vectors=text_vectors)

    return loss


def encode_fresh(rec: Recommender, data: PlatformData, batch: UserBatch, model: nn.Module):
    """The batch's fresh items' text vectors, encoded with gradient (one encoder row each)."""
    if not batch.fresh_rows:
        return None
    texts = [data.item_texts[i] for i in batch.fresh_rows]
    return model(**rec.tokenize(texts, rec.config.max_item_tokens))


def user_losses(
    rec: Recommender,
    data: PlatformData,
    batch: UserBatch,
    text_vectors: torch.Tensor,
    model: nn.Module | None = None,
) -> torch.Tensor:
    """Per-user losses [B], differentiable w.r.t. the head (and the LoRA in a LoRA step)."""
    fresh = _fresh_per_user(batch, encode_fresh(rec, data, batch, model or rec.model))
    params = dict(rec.head.named_parameters())
    return vmap(_loss_fn(rec, text_vectors), in_dims=_in_dims(fresh), randomness="different")(
        params, *_loss_args(batch, fresh)
    )


def chunk_users(batch: UserBatch, items: int) -> int:
    """Users per chunk: their [slots, items] logits together within ``LOGITS_PER_CHUNK``."""
    slots = batch.targets.shape[1] if len(batch) else 1
    return max(1, LOGITS_PER_CHUNK // max(1, slots * items))


def clipped_gradient_sums(
    rec: Recommender,
    data: PlatformData,
    batch: UserBatch,
    text_vectors: torch.Tensor,
    trained: list[nn.Parameter],
    max_grad_norm: float,
    hooked: nn.Module | None = None,
) -> tuple[dict[nn.Parameter, torch.Tensor], torch.Tensor]:
    """The sum over users of each user's gradient of the ``trained`` tensors, clipped to
    ``max_grad_norm`` as a whole, and the users' losses; users taken a chunk at a time.
    ``hooked`` is the encoder wrapped in Opacus' GradSampleModule, needed for a LoRA step."""
    sums = {p: torch.zeros_like(p) for p in trained}
    losses = []
    step = len(batch) if batch.fresh_rows else chunk_users(batch, len(text_vectors))
    for start in range(0, len(batch), step):
        part = batch if step >= len(batch) else _slice(batch, start, start + step)
        per_user, part_losses = per_user_gradients(rec, data, part, text_vectors, hooked)
        factor = clip_factors(
            sum((per_user[p].flatten(1) ** 2).sum(1) for p in trained), max_grad_norm
        )
        for p in trained:
            sums[p] += torch.einsum("b,b...->...", factor, per_user[p])
        losses.append(part_losses)
    return sums, torch.cat(losses) if losses else torch.zeros(0)


def _slice(batch: UserBatch, start: int, stop: int) -> UserBatch:
    """Users ``start:stop`` of a batch without fresh rows (a head step)."""
    return UserBatch(
        users=batch.users[start:stop],
        rows=batch.rows[start:stop],
        mask=batch.mask[start:stop],
        targets=batch.targets[start:stop],
        fresh_rows=[],
        fresh_owner=batch.fresh_owner[:0],
        fresh_slots=batch.fresh_slots[start:stop],
        input_slot=batch.input_slot[start:stop],
    )


def per_user_gradients(
    rec: Recommender,
    data: PlatformData,
    batch: UserBatch,
    text_vectors: torch.Tensor,
    hooked: nn.Module | None = None,
) -> tuple[dict[nn.Parameter, torch.Tensor], torch.Tensor]:
    """({parameter: [B, *shape] per-user gradients}, per-user losses [B]).

    ``hooked`` is the encoder wrapped in Opacus' GradSampleModule, needed for a LoRA step.
    """
    fresh = encode_fresh(rec, data, batch, hooked) if batch.fresh_rows else None
    params = {k: p.detach() for k, p in rec.head.named_parameters()}
    per_user = _fresh_per_user(batch, fresh.detach() if fresh is not None else None)
    loss = _loss_fn(rec, text_vectors)

    def loss_and_value(*args):
        value = loss(*args)
        return value, value.detach()

    argnums = (0,) if per_user is None else (0, 1)
    grads, losses = vmap(
        grad(loss_and_value, argnums=argnums, has_aux=True),
        in_dims=_in_dims(per_user),
        randomness="different",
    )(params, *_loss_args(batch, per_user))
    head_grads = grads[0]
    out = {p: head_grads[name] for name, p in rec.head.named_parameters()}
    if fresh is not None:
        fresh_grads = grads[1]
        # d(user loss)/d(fresh vector) → through the encoder; Opacus' hooks give each encoder
        # row's gradient, and a user's gradient is the sum over its own rows.
        rows = torch.zeros(len(batch.fresh_rows) + 1, rec.text_dim, device=fresh.device)
        rows.index_add_(0, batch.fresh_slots.flatten(), fresh_grads.flatten(0, 1))
        fresh.backward(rows[:-1])
        for p in (p for p in rec.model.parameters() if p.requires_grad):
            per_row = p.grad_sample
            summed = torch.zeros(len(batch), *p.shape, device=per_row.device)
            out[p] = summed.index_add_(0, batch.fresh_owner, per_row)
            p.grad_sample, p.grad = None, None
    return out, losses


def clip_factors(squared_norms: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    """Each user's clipping factor: min(1, C / ‖g‖)."""
    return (max_grad_norm / (squared_norms.sqrt() + 1e-6)).clamp(max=1.0)


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
    factor = clip_factors(torch.stack(squares).sum(0), max_grad_norm)
    sums = {p: torch.einsum("b,b...->...", factor, g) for p, g in per_user.items()}
    return add_noise(
        sums,
        max_grad_norm=max_grad_norm,
        noise_multiplier=noise_multiplier,
        expected_batch_size=expected_batch_size,
        generator=generator,
    )


def add_noise(
    sums: dict[nn.Parameter, torch.Tensor],
    *,
    max_grad_norm: float,
    noise_multiplier: float,
    expected_batch_size: float,
    generator: torch.Generator | None = None,
) -> dict[nn.Parameter, torch.Tensor]:
    """N(0, (σ·C)²) on every coordinate of the clipped sums, divided by the expected batch."""
    out = {}
    for p, summed in sums.items():
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
