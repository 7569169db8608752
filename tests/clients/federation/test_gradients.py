"""The fast DP head step: the same clipped, noised gradient as the per-user reference."""

import pytest
import torch

from clients.federation.gradients import (
    DPStep,
    add_noise,
    clipped_head_sums,
    per_user_gradients,
    privatize_gradients,
)
from clients.federation.training import set_gradients
from tests.clients.federation.test_training import _batch, _perturb, platform  # noqa: F401


@pytest.mark.parametrize("clip", [1e6, 0.5, 0.01])  # no clipping, some users clipped, all
def test_the_fast_head_step_equals_the_per_user_reference(tiny_rec, platform, clip):  # noqa: F811
    data, rec = platform, tiny_rec
    _perturb(rec, scale=0.3)
    items = rec.encode_items(data.item_texts)
    batch = _batch(data, [0, 1, 2, 3, 4], positions=4)
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
    sums, losses = clipped_head_sums(rec, batch, items, clip)
    fast = add_noise({p: sums[p] for p in head}, **noise(3))
    torch.testing.assert_close(losses, ref_losses)
    for p in head:
        assert torch.count_nonzero(fast[p]) > 0
        torch.testing.assert_close(fast[p], reference[p], atol=1e-6, rtol=1e-5)


def test_a_dp_head_step_takes_the_fast_path_and_without_noise_or_clip_is_the_plain_step(
    tiny_rec,
    platform,  # noqa: F811
    monkeypatch,
):
    from clients.federation import training

    data, rec = platform, tiny_rec
    _perturb(rec, scale=0.3)
    items = rec.encode_items(data.item_texts)
    batch = _batch(data, [0, 2, 3], positions=4)
    head = list(rec.head.parameters())
    set_gradients(rec, data, batch, items, head, dp=None)
    plain = [p.grad.clone() for p in head]
    for p in head:
        p.grad = None

    def reference_not_used(*args, **kwargs):
        raise AssertionError("a head step does not materialise per-user gradients")

    monkeypatch.setattr(training, "per_user_gradients", reference_not_used)
    set_gradients(rec, data, batch, items, head, dp=DPStep(1e9, 0.0, 3.0))
    for p, g in zip(head, plain, strict=True):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)
