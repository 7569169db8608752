import random

import pytest
import torch

from clients.federation.examples import NO_TARGET, build_batch
from clients.federation.training import (
    DPStep,
    encoder_row_gradients,
    lora_schedule,
    per_user_gradients,
    privatize_gradients,
    set_gradients,
    user_losses,
)


@pytest.fixture
def platform(tiny_platform):
    """The tiny catalogue with five users whose training histories are long enough to cut."""
    from shared.data import PlatformData

    rng = random.Random(3)
    items = tiny_platform.items
    sequences = [rng.sample(range(len(items)), k) for k in (8, 6, 7, 5, 8)]
    return PlatformData("longer", items, [f"u{i}" for i in range(5)], sequences)


def _batch(data, users, *, lora_items=0, window=3):
    return build_batch(data, users, window=window, lora_items=lora_items)


def _perturb(rec, scale=0.1, seed=0):
    """Non-zero LoRA B and head, so that every trainable tensor gets a gradient."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in [*rec.model.named_parameters(), *rec.head.named_parameters()]:
            if p.requires_grad and "lora_A" not in name:
                p.add_(torch.randn(p.shape, generator=gen) * scale)


def _trainable(rec):
    return [p for p in [*rec.head.parameters(), *rec.model.parameters()] if p.requires_grad]


def test_an_example_is_the_recent_window_and_the_item_after_each_slot(platform):
    data = platform
    users = [0, 2, 3]
    batch = _batch(data, users, lora_items=2, window=3)
    for row, u in enumerate(users):
        train = data.train_sequence(u)
        inputs = batch.rows[row][batch.mask[row]].tolist()
        assert inputs == train[:-1][-3:]  # the window before the most recent item, oldest first
        assert batch.mask[row].tolist()[-1]  # right-aligned: the most recent input is last
        targets = [t for t in batch.targets[row].tolist() if t != NO_TARGET]
        # each input slot predicts the item after it; the start slot the first, unless the
        # window cut earlier items off
        expected = train[-len(inputs) :] if len(train) - 1 > 3 else train
        assert targets == expected
        assert batch.targets[row, -1] == train[-1]  # the last slot predicts the latest item
        fresh = [
            batch.fresh_rows[s]
            for s in batch.fresh_slots[row].tolist()
            if s < len(batch.fresh_rows)
        ]
        assert fresh == train[-3:-1][::-1]  # the items just before the most recent target


def test_a_short_history_fills_the_window_from_the_right(platform):
    data = platform
    short = PlatformDataWith(data, [[4, 1, 6, 2]])  # training history: 4, 1
    batch = _batch(short, [0], window=3)
    assert batch.rows[0].tolist() == [0, 0, 4] and batch.mask[0].tolist() == [False, False, True]
    assert batch.targets[0].tolist() == [NO_TARGET, NO_TARGET, 4, 1]  # start → 4, 4 → 1


def PlatformDataWith(data, sequences):  # noqa: N802 - a tiny factory, read as a constructor
    from shared.data import PlatformData

    return PlatformData("short", data.items, [f"s{i}" for i in range(len(sequences))], sequences)


def test_lora_steps_are_spread_over_the_round():
    assert lora_schedule(40, 2) == {20, 40}
    assert lora_schedule(5, 5) == {1, 2, 3, 4, 5}
    assert lora_schedule(10, 0) == set()


def test_loss_of_one_user_ignores_the_rest_of_its_batch(tiny_rec, platform):
    data = platform
    _perturb(tiny_rec)
    items = tiny_rec.catalogue_text_vectors(data.item_texts)
    for lora_items in (0, 2):
        losses = {}
        for others in ([], [1, 3], [2, 4, 3]):
            batch = _batch(data, [0, *others], lora_items=lora_items)
            losses[tuple(others)] = float(user_losses(tiny_rec, data, batch, items)[0])
        first = losses[()]
        assert all(v == pytest.approx(first, abs=1e-5) for v in losses.values()), losses


def test_per_user_gradients_are_each_users_own(tiny_rec, platform):
    """The per-user gradient of every trainable tensor (head, and LoRA through Opacus' per-row
    hooks summed per user) equals the gradient of that user's loss alone."""
    data, rec = platform, tiny_rec
    _perturb(rec)
    items = rec.catalogue_text_vectors(data.item_texts)
    users = [0, 2, 3, 4]
    batch = _batch(data, users, lora_items=2)
    singles = []
    for row in range(len(users)):
        one = _batch(data, users, lora_items=2)  # the same draws, then keep one user
        one = _select(one, row)
        for p in _trainable(rec):
            p.grad = None
        user_losses(rec, data, one, items).sum().backward()
        singles.append({p: p.grad.clone() for p in _trainable(rec)})
    rec.model.train()
    with encoder_row_gradients(rec) as hooked:
        per_user, _ = per_user_gradients(rec, data, batch, items, hooked)
    assert set(per_user) == set(_trainable(rec))
    lora = [p for p in rec.model.parameters() if p.requires_grad]
    assert all(torch.count_nonzero(per_user[p]) > 0 for p in lora)
    for row in range(len(users)):
        for p, g in singles[row].items():
            torch.testing.assert_close(per_user[p][row], g, atol=1e-5, rtol=1e-4)


def _select(batch, row):
    """A batch of one user taken from ``batch`` (fresh rows renumbered)."""
    from clients.federation.examples import UserBatch

    owned = (batch.fresh_owner == row).nonzero().flatten()
    remap = {int(old): new for new, old in enumerate(owned)}
    slots = batch.fresh_slots[row : row + 1].clone()
    slots = slots.apply_(lambda s: remap.get(s, len(owned)))
    return UserBatch(
        users=[batch.users[row]],
        rows=batch.rows[row : row + 1],
        mask=batch.mask[row : row + 1],
        targets=batch.targets[row : row + 1],
        fresh_rows=[batch.fresh_rows[i] for i in owned.tolist()],
        fresh_owner=torch.zeros(len(owned), dtype=torch.long),
        fresh_slots=slots,
        input_slot=batch.input_slot[row : row + 1],
    )


def _plain_loss(rec, batch, row, text_vectors, *, catalogue_path=True):
    """One user's loss written out without torch.func: the adaptor over the whole catalogue, the
    transformer over the user's window, the mean cross-entropy of every slot's next item."""
    catalogue = rec.head.adaptor(text_vectors)
    scored = catalogue if catalogue_path else catalogue.detach()
    rows, mask = batch.rows[row : row + 1], batch.mask[row : row + 1]
    users = rec.head(catalogue[rows], mask, every_slot=True)[0]
    return torch.nn.functional.cross_entropy(
        users @ scored.T, batch.targets[row], ignore_index=NO_TARGET
    )


def test_per_user_gradients_include_the_catalogue_path(tiny_rec, platform):
    """Each user's gradient equals the gradient of that user's loss written out by hand, and the
    adaptor's gradient through the scored catalogue is part of it (it would differ without)."""
    data, rec = platform, tiny_rec
    _perturb(rec)
    items = rec.catalogue_text_vectors(data.item_texts)
    users = [0, 1, 2, 3, 4]
    batch = _batch(data, users)
    per_user, losses = per_user_gradients(rec, data, batch, items)
    weight = rec.head.adaptor.linear.weight
    for row in range(len(users)):
        rec.head.zero_grad(set_to_none=True)
        loss = _plain_loss(rec, batch, row, items)
        loss.backward()
        assert float(losses[row]) == pytest.approx(float(loss), abs=1e-5)
        for p in rec.head.parameters():
            torch.testing.assert_close(per_user[p][row], p.grad, atol=1e-5, rtol=1e-4)
        rec.head.zero_grad(set_to_none=True)
        _plain_loss(rec, batch, row, items, catalogue_path=False).backward()
        assert not torch.allclose(weight.grad, per_user[weight][row], atol=1e-4)


def _step(rec, data, batch, items, dp):
    trained = _trainable(rec)
    rec.model.train()
    optimizer = torch.optim.SGD(trained, lr=0.5)
    optimizer.zero_grad(set_to_none=True)
    if dp is None:
        set_gradients(rec, data, batch, items, trained, dp=None)
    else:
        with encoder_row_gradients(rec) as hooked:
            set_gradients(rec, data, batch, items, trained, dp=dp, hooked=hooked)
    grads = [p.grad.clone() for p in trained]
    optimizer.step()
    return grads, [p.detach().clone() for p in trained]


def _dp_matches_plain(make_rec, data, users):
    plain, private = make_rec(), make_rec()
    _perturb(plain)
    _perturb(private)
    items = plain.catalogue_text_vectors(data.item_texts)
    batch = _batch(data, users, lora_items=2)
    g_plain, w_plain = _step(plain, data, batch, items, None)
    g_dp, w_dp = _step(private, data, batch, items, DPStep(1e9, 0.0, len(users)))
    assert all(torch.count_nonzero(g) > 0 for g in g_plain)
    for a, b in zip(g_dp, g_plain, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    for a, b in zip(w_dp, w_plain, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_dp_step_without_noise_or_clipping_equals_plain_step(
    tiny_vocab, tiny_model_config, platform
):
    from tests.conftest import make_tiny_recommender

    _dp_matches_plain(
        lambda: make_tiny_recommender(tiny_vocab, tiny_model_config), platform, [0, 2, 3]
    )


def test_clipping_bounds_each_user_and_noise_has_the_promised_scale():
    p = torch.nn.Parameter(torch.zeros(4000))
    per_user = {p: torch.stack([torch.full((4000,), 10.0), torch.zeros(4000)])}
    clipped = privatize_gradients(
        per_user, max_grad_norm=2.0, noise_multiplier=0.0, expected_batch_size=1.0
    )
    assert float(clipped[p].norm()) == pytest.approx(2.0, rel=1e-5)
    gen = torch.Generator().manual_seed(0)
    empty = privatize_gradients(
        {p: torch.zeros(0, 4000)},
        max_grad_norm=2.0,
        noise_multiplier=1.5,
        expected_batch_size=10.0,
        generator=gen,
    )  # nobody sampled: the step still releases noise of std σ·C / B
    assert float(empty[p].std()) == pytest.approx(1.5 * 2.0 / 10.0, rel=0.05)


@pytest.mark.integration
def test_dp_equals_plain_on_the_real_encoder(platform):
    """opacus#820: peft adapters under Opacus must get the right gradients with the real model."""
    from shared.config import ModelConfig
    from shared.model import build_recommender

    cfg = ModelConfig(max_item_tokens=16, history_items=3, dim=16)
    _dp_matches_plain(lambda: build_recommender(cfg), platform, [0, 2, 3])


def _trained_head(vocab, model_cfg, data, state_dir, *, reproducible):
    """The head after two DP steps from the same start, config and run id."""
    from clients.federation.privacy import PrivacyLedger
    from clients.federation.training import train_round
    from shared.config import FedxrecConfig
    from tests.conftest import make_tiny_recommender

    cfg = FedxrecConfig().with_overrides(
        {"train.steps": 2, "train.batch_size": 4, "privacy.noise_multiplier": 1.0}
    )
    rec = make_tiny_recommender(vocab, model_cfg)
    ledger = PrivacyLedger.open(
        state_dir, platform=data.name, num_users=data.num_users, delta=0.0, epsilon_budget=1e3
    )
    train_round(rec, data, cfg, ledger=ledger, run_id="7", reproducible=reproducible)
    return torch.cat([p.detach().flatten() for p in rec.head.parameters()])


def test_dp_noise_is_not_replayable_from_the_runs_public_values(
    tiny_vocab, tiny_model_config, platform, tmp_path
):
    """The coordinator knows the config, the seed, the run id and the site's name: a site's noise
    drawn from them could be replayed and subtracted. Only a benchmark's reproducible sites do."""
    runs = {
        name: _trained_head(
            tiny_vocab, tiny_model_config, platform, tmp_path / name, reproducible=r
        )
        for name, r in (("a", False), ("b", False), ("c", True), ("d", True))
    }
    assert not torch.equal(runs["a"], runs["b"])
    assert torch.equal(runs["c"], runs["d"])


def test_node_config_asks_for_reproducible_noise_explicitly(tmp_path):
    from clients.federation.site import site_from_node_config
    from shared.config import FedxrecConfig

    node = {"platform": "books", "data-path": str(tmp_path), "state-dir": str(tmp_path / "s")}
    cfg = FedxrecConfig()
    assert not site_from_node_config(node, cfg).reproducible_noise
    assert site_from_node_config(node | {"reproducible-noise": "true"}, cfg).reproducible_noise
