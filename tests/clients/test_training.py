import random

import pytest
import torch

from clients.training import Batch, example_losses, make_batch, privatize, release_dp_state


def _batch(data, users, seed=0):
    return make_batch(data, users, random.Random(seed))


def test_loss_of_one_example_ignores_the_rest_of_its_batch(tiny_rec, tiny_platform):
    data = tiny_platform
    items = tiny_rec.encode_items(data.item_texts)
    first = Batch([data.history_text([0, 1])], [[0, 1]], [5])
    others_a = Batch(
        ["Fargo (1996)", "Heat (1995); Babe (1995); Alien (1979)"], [[3], [4, 6, 5]], [7, 2]
    )
    others_b = Batch(["Toy Story (1995)"], [[2]], [0])

    def loss_of_first(others):
        batch = Batch(
            first.history_texts + others.history_texts,
            first.histories + others.histories,
            first.targets + others.targets,
        )
        return float(example_losses(tiny_rec.model, tiny_rec, data, batch, items)[0])

    alone = example_losses(tiny_rec.model, tiny_rec, data, first, items)[0]
    assert loss_of_first(others_a) == pytest.approx(float(alone), abs=1e-5)
    assert loss_of_first(others_b) == pytest.approx(float(alone), abs=1e-5)


def test_batch_cuts_are_inside_the_training_history(tiny_platform):
    batch = _batch(tiny_platform, [0, 2, 2, 2])
    for user, history, target in zip([0, 2, 2, 2], batch.histories, batch.targets, strict=True):
        train = tiny_platform.train_sequence(user)
        assert history == train[: len(history)] and target == train[len(history)]
        assert 1 <= len(history) < len(train)


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _one_step(rec, data, batch, dp: bool):
    items = rec.encode_items(data.item_texts)
    params = [p for p in rec.model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.5)
    model = rec.model
    model.train()
    if dp:
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(torch.arange(len(batch.targets))),
            batch_size=len(batch.targets),
        )
        model, optimizer, _ = privatize(model, optimizer, loader, 0.0, 1e9)
    optimizer.zero_grad()
    example_losses(model, rec, data, batch, items).mean().backward()
    optimizer.step()
    grads = _grads(rec.model)
    if dp:
        release_dp_state(model, params)
    return grads


def _dp_matches_plain(make_rec, data, users):
    batch = _batch(data, users)
    plain, private = make_rec(), make_rec()
    g_plain = _one_step(plain, data, batch, dp=False)
    g_dp = _one_step(private, data, batch, dp=True)
    assert g_plain, "no trainable LoRA parameters"
    for name, g in g_plain.items():
        assert torch.count_nonzero(g) > 0 or "lora_A" in name
        torch.testing.assert_close(g_dp[name], g, atol=1e-5, rtol=1e-4)
    lora = {n: p for n, p in plain.model.named_parameters() if p.requires_grad}
    for name, p in private.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p, lora[name], atol=1e-5, rtol=1e-5)
    return plain, private


def test_dp_step_without_noise_or_clipping_equals_plain_step(
    tiny_vocab, tiny_model_config, tiny_platform
):
    from tests.conftest import make_tiny_recommender

    _dp_matches_plain(
        lambda: make_tiny_recommender(tiny_vocab, tiny_model_config), tiny_platform, [0, 2, 2]
    )


def test_per_sample_gradients_are_each_users_own(tiny_rec, tiny_platform):
    """Opacus' per-sample gradient of example i equals the gradient of example i alone."""
    data = tiny_platform
    # a non-zero adapter so that lora_A gets gradients too
    with torch.no_grad():
        for name, p in tiny_rec.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    items = tiny_rec.encode_items(data.item_texts)
    batch = _batch(data, [0, 2, 2])
    params = {n: p for n, p in tiny_rec.model.named_parameters() if p.requires_grad}
    singles = []
    for i in range(3):
        tiny_rec.model.zero_grad()
        one = Batch(
            batch.history_texts[i : i + 1], batch.histories[i : i + 1], batch.targets[i : i + 1]
        )
        example_losses(tiny_rec.model, tiny_rec, data, one, items).sum().backward()
        singles.append({n: p.grad.clone() for n, p in params.items()})
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.arange(3)), batch_size=3
    )
    opt = torch.optim.SGD(list(params.values()), lr=0.1)
    model, opt, _ = privatize(tiny_rec.model, opt, loader, 0.0, 1e9)
    opt.zero_grad()
    example_losses(model, tiny_rec, data, batch, items).mean().backward()  # loss_reduction="mean"
    for name, p in params.items():
        for i in range(3):
            torch.testing.assert_close(p.grad_sample[i], singles[i][name], atol=1e-5, rtol=1e-4)
    release_dp_state(model, list(params.values()))


@pytest.mark.integration
def test_dp_equals_plain_on_the_real_encoder(tiny_platform):
    """opacus#820: peft adapters under Opacus must get the right gradients with the real model."""
    from shared.config import ModelConfig
    from shared.model import build_recommender

    cfg = ModelConfig(max_history_tokens=32, max_item_tokens=16)
    _dp_matches_plain(lambda: build_recommender(cfg), tiny_platform, [0, 2, 2])
