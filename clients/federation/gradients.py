"""User-level DP gradients: each user's gradient of the sequence head (and the LoRA), clipped,
summed and noised.

One example is one user: its loss averages that user's (history → next item) pairs, each a full
softmax over the catalogue's frozen vectors (clients/federation/training.py says why). Two ways to
the clipped sum, the same numbers:

- ``per_user_gradients`` + ``privatize_gradients``: every user's gradient of every trainable
  tensor (``torch.func``: vmap of grad for the head; in a LoRA step, Opacus' hooks on the encoder
  rows of the user's fresh items, summed per user), clipped, summed, noised;
- ``clipped_head_sums`` + ``add_noise``, for a head step (no LoRA): the d×d transform's per-user
  gradients are never materialised; their norms come from two P×P Gram matrices and their
  clipped sum is one matrix product (the norm of a sum of outer products), so a DP head step
  costs about what a non-private one does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from clients.federation.examples import UserBatch
from shared.data import PlatformData
from shared.model import Recommender


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


def _head_step_loss(
    small: dict[str, torch.Tensor],
    delta: torch.Tensor,
    windows: torch.Tensor,
    window_mask: torch.Tensor,
    targets: torch.Tensor,
    valid: torch.Tensor,
    seen: torch.Tensor,
    *,
    head: nn.Module,
    transform: torch.Tensor,
    item_vectors: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One user's loss as in ``_user_loss``, written so that one backward pass gives what the
    fast DP step needs: the gradients of the head's small tensors (``small``: recency, attention,
    prior), ``dL/du`` of each pair (through ``delta``, zero: u = h + h·T + prior + delta) and,
    as the auxiliary output, each pair's pooled history ``h``."""
    params = {**small, "transform": transform}
    pooled = functional_call(head, params, (item_vectors, windows, window_mask), {"pooled": True})
    users = pooled + pooled @ transform + small["prior"] + delta
    logits = users @ item_vectors.T
    padded = torch.cat([logits, logits.new_zeros(logits.shape[0], 1)], dim=-1)
    logits = padded.scatter(-1, seen, -1e9)[:, :-1]
    losses = nn.functional.cross_entropy(logits / temperature, targets, reduction="none")
    loss = (losses * valid).sum() / valid.sum().clamp(min=1.0)
    return loss, pooled.detach()


def clipped_head_sums(
    rec: Recommender, batch: UserBatch, item_vectors: torch.Tensor, max_grad_norm: float
) -> tuple[dict[nn.Parameter, torch.Tensor], torch.Tensor]:
    """The sum over users of each user's clipped gradient of the head, and the users' losses,
    without a [users, d, d] tensor of per-user transform gradients (a head step, no LoRA).

    A user's transform gradient is Σ_p h_p ⊗ g_p over its pairs (h: pooled history, g = dL/du),
    so its squared norm is Σ_pq (h_p·h_q)(g_p·g_q) (two P×P Gram matrices) and the clipped sum
    over users is one weighted matrix product. The small tensors' per-user gradients are cheap
    and taken as they are. The same clipped sum as ``per_user_gradients`` + ``clip_factors``.
    """
    head = rec.head
    named = dict(head.named_parameters())
    small = {k: p.detach() for k, p in named.items() if k != "transform"}
    transform = named["transform"].detach()

    def loss(small_params, delta, *args):
        value, pooled = _head_step_loss(
            small_params,
            delta,
            *args,
            head=head,
            transform=transform,
            item_vectors=item_vectors,
            temperature=rec.config.temperature,
        )
        return value, (value.detach(), pooled)

    delta = item_vectors.new_zeros(*batch.targets.shape, rec.dim)  # [B, P, d]
    args = (batch.windows, batch.window_mask, batch.targets, batch.valid, batch.seen)
    (small_grads, pair_grads), (losses, pooled) = vmap(
        grad(loss, argnums=(0, 1), has_aux=True), in_dims=(None, 0, 0, 0, 0, 0, 0)
    )(small, delta, *args)
    squares = sum((g.flatten(1) ** 2).sum(1) for g in small_grads.values())
    gram = (pooled @ pooled.transpose(1, 2)) * (pair_grads @ pair_grads.transpose(1, 2))
    factor = clip_factors(squares + gram.sum((1, 2)), max_grad_norm)
    sums = {}
    for name, p in named.items():
        if name == "transform":
            sums[p] = torch.einsum("b,bpi,bpj->ij", factor, pooled, pair_grads)
        else:
            sums[p] = torch.einsum("b,b...->...", factor, small_grads[name])
    return sums, losses


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
