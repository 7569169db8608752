"""The new-item fallback and the time-split validation world it is fitted on (hand-made fixtures)."""

import random

import pytest
import torch

from clients.scorer.collaborative import build_collaborative_index, index_fingerprint
from clients.scorer.fusion import (
    FALLBACK_SHARE,
    OFFSET,
    SCALE,
    FusionWeights,
    fit_fusion,
    fuse,
    standardise,
    standardised_signals,
    training_index,
)
from clients.scorer.new_items import (
    fit_new_item_fallback,
    time_split_world,
    training_before,
    validation_cutoff,
)
from shared.data import PlatformData
from shared.metrics import target_ranks
from shared.text import Item
from tests.clients.scorer.support import fitted_fusion

ITEMS = 400
CLUSTERS = [list(range(12 * c, 12 * c + 12)) for c in range(12)]  # old items 0-143
NEW_HISTORY = list(range(300, 336))  # new items users met in training, after the cut-off
NEW_TARGETS = list(range(340, 360))  # new items first seen as validation targets


def followers_of_the_new(users: int = 120) -> PlatformData:
    """Even users stay in one cluster of old items (before time 100); odd users met two of a
    cluster's items early, then a new one (time 200 + u), and their validation target is
    another new item. The newest fifth of the training sequences' items are the 36 new ones."""
    rng = random.Random(5)
    sequences, times = [], []
    for u in range(users):
        cluster = CLUSTERS[(u // 2) % len(CLUSTERS)]
        if u % 2 == 0:
            turn = 2 * ((u // 24) % 5)  # each validation target is someone's training item
            seq = (cluster[turn:] + cluster[:turn])[:8]
            ts = sorted(rng.uniform(0, 100) for _ in seq)
        else:
            new = NEW_HISTORY[(u // 2) % len(NEW_HISTORY)]
            seq = [*rng.sample(cluster, 2), new, NEW_TARGETS[u % 20], cluster[0]]
            ts = [*sorted(rng.uniform(0, 100) for _ in range(2)), 200.0 + u, 300.0 + u, 400.0]
        sequences.append(seq)
        times.append(ts)
    return PlatformData(
        name="timed",
        items=[Item(f"i{k}", f"title {k}") for k in range(ITEMS)],
        users=[f"u{k}" for k in range(users)],
        sequences=sequences,
        times=times,
    )


def _model_scores(data: PlatformData, knows_the_new: bool) -> torch.Tensor:
    """Noise, plus (``knows_the_new``) a lift for each odd user's validation target: the model
    ranks the new item fairly high, below the count signals' best known items."""
    scores = torch.randn(data.num_users, ITEMS, generator=torch.Generator().manual_seed(6))
    if knows_the_new:
        for u in range(1, data.num_users, 2):
            scores[u, data.split(u, "validation")[1]] += 3.0
    return scores


# what the validation fit keeps on the ML-100K sites (docs/experiments/new-items.md): EASE alone
EASE_ALONE = FusionWeights({"model": 0.0, "itemknn": 0.0, "popularity": 0.0, "ease": 1.0}, 0, 0, 1)


def _fit(data: PlatformData, scores: torch.Tensor) -> tuple[FusionWeights, list, list]:
    """The fallback fitted over EASE alone."""
    val = [data.split(u, "validation") for u in range(data.num_users)]
    histories, targets = [h for h, _ in val], [t for _, t in val]
    local = training_index(data)
    weights = EASE_ALONE
    world = time_split_world(data, lambda s: training_index(data, sequences=s))
    fitted = fit_new_item_fallback(scores, weights, world, local, histories, targets)
    return fitted, histories, targets


def test_the_time_split_world_counts_only_training_interactions_before_its_cut_off():
    data = followers_of_the_new()
    cutoff = validation_cutoff(data)
    assert cutoff == 200.0 + 1  # the first new item met in training (user 1's, at 201)
    world = time_split_world(data, lambda s: training_index(data, sequences=s))
    counted = training_before(data, cutoff)
    for u, seq in enumerate(counted):
        train = data.train_sequence(u)
        assert seq == [i for i, t in zip(train, data.times[u], strict=False) if t < cutoff]
    assert world.index.fingerprint == index_fingerprint(counted, data)
    assert float(world.index.counts[300:].sum()) == 0.0  # every new item unknown to it
    assert float(world.index.counts[:144].sum()) == sum(len(s) for s in counted)
    # the world's users are the validation split: training histories, validation targets
    assert world.histories == [data.train_sequence(u) for u in range(data.num_users)]
    assert world.targets == [data.split(u, "validation")[1] for u in range(data.num_users)]
    assert world.new == [u % 2 == 1 for u in range(data.num_users)]


def test_a_platform_without_times_has_no_world_and_the_fallback_stays_off():
    data = followers_of_the_new()
    untimed = PlatformData(data.name, data.items, data.users, data.sequences)
    assert time_split_world(untimed, lambda s: training_index(untimed, sequences=s)) is None
    scores = _model_scores(data, knows_the_new=True)
    val = [data.split(u, "validation") for u in range(data.num_users)]
    histories, targets = [h for h, _ in val], [t for _, t in val]
    local = training_index(untimed)
    weights = fit_fusion(scores, local, histories, targets)
    fitted = fit_new_item_fallback(scores, weights, None, local, histories, targets)
    assert fitted.fallback is None and fitted.weights == weights.weights
    assert fitted.to_dict()["new_items"]["fallback"] == "off"


def test_the_fit_turns_the_fallback_on_when_the_model_ranks_the_new_items():
    data = followers_of_the_new()
    scores = _model_scores(data, knows_the_new=True)
    fitted, histories, targets = _fit(data, scores)
    assert fitted.fallback is not None, fitted.new_items_fit
    assert fitted.new_items_fit["best_gain_z"] >= 1.645
    assert fitted.to_dict()["new_items"]["fallback"] == "scaled"
    # ranked as on the validation cut-off day, most new items reach the top 10 (not where the
    # noise beat the model's lift), many more than without the fallback
    world = time_split_world(data, lambda s: training_index(data, sequences=s))
    signals = standardised_signals(scores, world.index, histories, fitted.kappa)
    odd = list(range(1, data.num_users, 2))

    def ranks(weights):
        fused = fuse(signals, weights)
        return [target_ranks(fused[u : u + 1], [targets[u]], [histories[u]])[0] for u in odd]

    on, off = (sum(r <= 10 for r in ranks(w)) for w in (fitted.weights, fitted.mix))
    assert on >= 0.75 * len(odd) and on - off >= 0.2 * len(odd)


def test_the_fit_keeps_the_fallback_off_when_the_model_scores_at_random():
    data = followers_of_the_new()
    fitted, _, _ = _fit(data, _model_scores(data, knows_the_new=False))
    assert fitted.fallback is None
    assert fitted.to_dict()["new_items"]["fallback"] == "off"
    assert fitted.new_items_fit["time_split_new_targets"] == data.num_users // 2


def test_off_is_the_fusion_as_it_was():
    """Without the fallback, every count signal falls back to the model's z-score exactly as
    before (its z blended with the model's by the counts' say) and the fused score is Σ w·z."""
    data = followers_of_the_new()
    local = training_index(data, sequences=training_before(data, 201.0))
    histories = [data.train_sequence(u) for u in range(data.num_users)]
    scores = _model_scores(data, knows_the_new=True)
    excluded = torch.zeros(len(histories), ITEMS, dtype=torch.bool)
    for u, h in enumerate(histories):
        excluded[u, h] = True
    model_z = standardise(scores, excluded)
    weights = {"model": 0.2, "itemknn": 0.3, "popularity": 0.1, "ease": 0.4}
    for kappa in (0.0, 3.0):
        signals = standardised_signals(scores, local, histories, kappa)
        counts = local.counts
        say = counts / (counts + kappa) if kappa else (counts > 0).float()
        known_user = torch.tensor([[bool((counts[h] > 0).any())] for h in histories]).float()
        say = say.unsqueeze(0) * known_user
        expected = weights["model"] * model_z
        for name, raw in local.scores(histories).items():
            z = say * standardise(raw, excluded) + (1 - say) * model_z
            torch.testing.assert_close(signals[name], z)
            expected = expected + weights[name] * z
        torch.testing.assert_close(fuse(signals, weights), expected, rtol=0, atol=1e-5)
        assert torch.equal(
            fuse(signals, weights), fuse(signals, FusionWeights(weights, 0, 0, 1).weights)
        )
        # a = 1, β = 0 is off, and the fallback moves only the unknown items of users whose
        # latest item is unknown
        same = fuse(signals, {**weights, SCALE: 1.0, OFFSET: 0.0})
        torch.testing.assert_close(same, fuse(signals, weights))
        moved = fuse(signals, {**weights, SCALE: 3.0, OFFSET: 1.0}) != fuse(signals, weights)
        assert torch.equal(moved, signals[FALLBACK_SHARE].bool())
        assert signals[FALLBACK_SHARE][0::2].sum() == 0  # even users' latest item is known
        assert signals[FALLBACK_SHARE][1::2, 340:360].all()


def test_the_fit_never_reads_a_test_target(tiny_vocab, tiny_model_config):
    """Weights, κ and the new-item fallback are fitted on the validation split and the
    time-split world: corrupting every test target (item and time) changes none of them."""
    data = followers_of_the_new(60)
    corrupted = PlatformData(
        data.name,
        data.items,
        data.users,
        [s[:-1] + [(s[-1] + 7) % ITEMS] for s in data.sequences],
        [t[:-1] + [t[-1] + 1000.0] for t in data.times],
    )
    assert all(
        corrupted.split(u, "validation") == data.split(u, "validation")
        for u in range(data.num_users)
    )

    fitted = fitted_fusion(data, tiny_vocab, tiny_model_config)
    assert "time_split_off_ndcg@10" in fitted.new_items_fit  # the world was there and used
    assert fitted == fitted_fusion(corrupted, tiny_vocab, tiny_model_config)


@pytest.mark.parametrize("on", [False, True])
def test_the_fallback_travels_through_the_cached_weights(on):
    """What to_dict reports is what the scorer's cache reads back."""
    import tempfile
    from pathlib import Path

    from clients.scorer.local_signals import _read_weights, _weights_path, _write_json

    data = followers_of_the_new()
    index = build_collaborative_index(data, data.sequences)
    mix = {"model": 0.3, "itemknn": 0.2, "popularity": 0.0, "ease": 0.5}
    extra = {SCALE: 3.0, OFFSET: 2.0} if on else {}
    fit = FusionWeights(
        {**mix, **extra}, 0.1, 0.05, 120, kappa=3.0, new_items_fit={"time_split_users": 120}
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = _weights_path(Path(tmp), "m", index)
        _write_json(path, fit.to_dict())
        assert _read_weights(Path(tmp), "m", index) == fit
