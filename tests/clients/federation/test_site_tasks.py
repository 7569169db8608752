"""What a site keeps after personalising: its fine-tune only where the gain is clear."""

import numpy as np
import pytest

from clients.federation import site_tasks
from shared.adapter import get_adapter_arrays


@pytest.fixture
def two_models(tiny_rec):
    """The global model and a fine-tune that differs from it in the start vector only."""
    global_arrays = get_adapter_arrays(tiny_rec)
    personal = {k: v.copy() for k, v in global_arrays.items()}
    personal["head.start"][0] = 1.0
    return global_arrays, personal


def _ranks_by_prior(per_user):
    """A stand-in ranking: each user's rank is a function of the start vector the model holds."""

    def split_ranks(rec, data, split, users, vectors):
        share = float(rec.head.start[0])  # 0 for the global model, 1 for the fine-tune
        return [per_user(u, share) for u in users]

    return split_ranks


def test_a_clear_gain_keeps_the_fine_tune(tiny_rec, tiny_platform, two_models, monkeypatch):
    monkeypatch.setattr(
        site_tasks, "split_ranks", _ranks_by_prior(lambda u, s: 1 if s > 0.6 else 30)
    )
    kept, choice = site_tasks.choose_personal_mix(tiny_rec, tiny_platform, *two_models, 1.645)
    assert choice.mix == 0.75  # the first mix past the change; more of it gains nothing
    assert choice.validation_gain == pytest.approx(1.0) and choice.users == tiny_platform.num_users
    assert kept["head.start"][0] == pytest.approx(0.75)
    assert float(tiny_rec.head.start[0]) == pytest.approx(0.75)  # the model holds what is kept


def test_a_gain_within_noise_keeps_the_global_model(
    tiny_rec, tiny_platform, two_models, monkeypatch
):
    # The fine-tune helps one user a lot and hurts the others a little: its mean gain is
    # positive but far from clear on this many users.
    def per_user(u, share):
        if share < 0.2:
            return 5
        return 1 if u == 0 else 6

    monkeypatch.setattr(site_tasks, "split_ranks", _ranks_by_prior(per_user))
    global_arrays, personal = two_models
    kept, choice = site_tasks.choose_personal_mix(tiny_rec, tiny_platform, *two_models, 1.645)
    assert choice.validation_gain > 0 and choice.mix == 0.0
    assert all(np.array_equal(kept[k], global_arrays[k]) for k in kept)
    _, anyway = site_tasks.choose_personal_mix(tiny_rec, tiny_platform, *two_models, 0.0)
    assert anyway.mix > 0  # with no margin asked, the better model is kept
