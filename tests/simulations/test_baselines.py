"""Popularity and ItemKNN on hand-made platforms where the right scores and ranks are known."""

import math

import pytest
import torch

from shared.data import PlatformData
from shared.text import Item
from simulations.baselines import (
    baseline_ranks,
    ease_scores,
    itemknn_scores,
    local_index,
    popularity_scores,
    training_matrix,
)


def make_platform(sequences: list[list[int]], items: int) -> PlatformData:
    return PlatformData(
        name="hand",
        items=[Item(f"i{k}", f"title {k}") for k in range(items)],
        users=[f"u{k}" for k in range(len(sequences))],
        sequences=sequences,
    )


@pytest.fixture
def hand() -> PlatformData:
    # training parts (all but the last two): {0,1}, {0,1}, {0,2}, {3}; items 4 and 5 appear only
    # as validation/test targets, so no baseline may learn anything about them.
    return make_platform([[0, 1, 4, 5], [0, 1, 5, 4], [0, 2, 4, 1], [3, 4, 2]], items=6)


def test_training_matrix_holds_only_training_sequences(hand):
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 0, 1, 0, 0, 0],
            [0, 0, 0, 1, 0, 0],
        ],
        dtype=torch.float32,
    )
    assert torch.equal(training_matrix(hand), expected)


def test_popularity_counts_training_interactions_only(hand):
    scores = popularity_scores(hand, "test", [0, 1, 2, 3])
    # items 4 and 5 are every user's validation/test targets: counting them would be a leak
    assert scores[0].tolist() == [3, 2, 1, 1, 0, 0]
    assert torch.equal(scores[0], scores[3])


def test_popularity_ranks_history_excluded_ties_pessimistic(hand):
    # u0: history {0,1,4}, candidates 2 (1), 3 (1), 5 (0): target 5 is last of three
    # u1: history {0,1,5}, candidates 2, 3, 4 (0): target 4 third
    # u2: history {0,2,4}, candidates 1 (2), 3 (1), 5 (0): target 1 first
    # u3: history {3,4}, candidates 0 (3), 1 (2), 2 (1), 5 (0): target 2 third
    assert baseline_ranks(popularity_scores, hand, "test") == [3, 3, 1, 3]


def test_popularity_validation_split_uses_the_shorter_history(hand):
    # u2 validation: history {0,2}, target 4 (count 0) ties with 5 and trails 1 and 3
    assert baseline_ranks(popularity_scores, hand, "validation", [2]) == [4]


def item_similarity(data):
    """The dense [items, items] similarity held by the index's neighbour lists."""
    index = local_index(data)
    sim = torch.zeros(index.items, index.items)
    for i in range(index.items):
        keep = index.neighbours[i] >= 0
        sim[i, index.neighbours[i][keep]] = index.similarity[i][keep]
    return sim


def test_item_similarity_is_co_occurrence_cosine(hand):
    sim = item_similarity(hand)
    assert sim[0, 1] == pytest.approx(2 / math.sqrt(3 * 2))  # 2 users share 0 and 1
    assert sim[0, 2] == pytest.approx(1 / math.sqrt(3 * 1))
    assert sim[1, 2] == 0 and sim[0, 3] == 0
    assert torch.allclose(sim, sim.T)
    assert torch.all(sim.diagonal() == 0)
    assert torch.all(sim[4] == 0) and torch.all(sim[:, 5] == 0)  # targets never leak in


def test_itemknn_scores_and_ranks(hand):
    scores = itemknn_scores(hand, "test", [2])
    # u2's history {0,2,4}: item 1 is similar to 0 only, item 3 and 5 to nothing
    assert scores[0, 1] == pytest.approx(2 / math.sqrt(6))
    assert scores[0, 3] == 0 and scores[0, 5] == 0
    # u0/u1: item 2 (similar to their item 0) beats their targets; u3: everything ties at 0
    assert baseline_ranks(itemknn_scores, hand, "test") == [3, 3, 1, 4]


def test_itemknn_finds_the_neighbour_popularity_misses():
    # Items 0 and 1 always go together; item 2 is the most popular. The last user saw item 0
    # and their validation item is 1: ItemKNN ranks it first, popularity behind item 2.
    train = [[0, 1], [0, 1], [2, 3], [2, 4], [2, 5]]
    sequences = [seq + [6, 7] for seq in train] + [[0, 1, 7]]
    data = make_platform(sequences, items=8)
    user = [len(sequences) - 1]
    assert baseline_ranks(itemknn_scores, data, "validation", user) == [1]
    assert baseline_ranks(popularity_scores, data, "validation", user) == [2]


def test_ease_is_the_closed_form_on_training_sequences(hand):
    x = training_matrix(hand).double()
    gram = x.T @ x + 250.0 * torch.eye(6, dtype=torch.float64)
    p = torch.linalg.inv(gram)
    b = -p / p.diagonal().unsqueeze(0)
    b.fill_diagonal_(0.0)
    history = torch.zeros(1, 6, dtype=torch.float64)
    history[0, [0, 2, 4]] = 1.0  # u2's test history
    torch.testing.assert_close(ease_scores(hand, "test", [2]), (history @ b).float())
