"""The DP head step: users in chunks give the same clipped, noised gradient as the per-user
reference, and without noise or clipping it is the plain step."""

import pytest
import torch

from clients.federation import gradients
from clients.federation.gradients import (
    DPStep,
    add_noise,
    clipped_gradient_sums,
    per_user_gradients,
    privatize_gradients,
)
from clients.federation.training import set_gradients
from tests.clients.federation.test_training import _batch, _perturb, platform  # noqa: F401


@pytest.mark.parametrize("clip", [1e6, 0.5, 0.01])  # no clipping, some users clipped, all
def test_chunked_clipped_sums_equal_the_per_user_reference(
    tiny_rec,
    platform,  # noqa: F811
    clip,
    monkeypatch,
):
    data, rec = platform, tiny_rec
    _perturb(rec, scale=0.3)
    items = rec.catalogue_text_vectors(data.item_texts)
    batch = _batch(data, [0, 1, 2, 3, 4])
    head = list(rec.head.parameters())
    per_user, ref_losses = per_user_gradients(rec, data, batch, items)
    norms = sum((per_user[p].flatten(1) ** 2).sum(1) for p in head).sqrt()
    assert (norms > clip).any() == (clip < 1e6)  # the cases are what they say

    def noise(seed):
        return {
            "max_grad_norm": clip,
            "noise_multiplier": 0.7,
            "expected_batch_size": 5.0,
            "generator": torch.Generator().manual_seed(seed),
        }

    reference = privatize_gradients({p: per_user[p] for p in head}, **noise(3))
    slots = batch.targets.shape[1]
    monkeypatch.setattr(gradients, "LOGITS_PER_CHUNK", 2 * slots * len(data.items))
    assert gradients.chunk_users(batch, len(items)) == 2  # three chunks: 2, 2, 1 users
    sums, losses = clipped_gradient_sums(rec, data, batch, items, head, clip)
    chunked = add_noise(sums, **noise(3))
    torch.testing.assert_close(losses, ref_losses)
    for p in head:
        assert torch.count_nonzero(chunked[p]) > 0
        torch.testing.assert_close(chunked[p], reference[p], atol=1e-6, rtol=1e-5)


def test_a_dp_head_step_without_noise_or_clip_is_the_plain_step(tiny_rec, platform):  # noqa: F811
    data, rec = platform, tiny_rec
    _perturb(rec, scale=0.3)
    items = rec.catalogue_text_vectors(data.item_texts)
    batch = _batch(data, [0, 2, 3])
    head = list(rec.head.parameters())
    set_gradients(rec, data, batch, items, head, dp=None)
    plain = [p.grad.clone() for p in head]
    for p in head:
        p.grad = None
    set_gradients(rec, data, batch, items, head, dp=DPStep(1e9, 0.0, 3.0))
    for p, g in zip(head, plain, strict=True):
        assert torch.count_nonzero(g) > 0
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)


def test_an_empty_sample_still_releases_noise(tiny_rec, platform):  # noqa: F811
    data, rec = platform, tiny_rec
    items = rec.catalogue_text_vectors(data.item_texts)
    head = list(rec.head.parameters())
    dp = DPStep(1.0, 1.0, 4.0, torch.Generator().manual_seed(0))
    set_gradients(rec, data, _batch(data, []), items, head, dp=dp)
    assert all(torch.count_nonzero(p.grad) > 0 for p in head)
