import math

import pytest
import torch

from shared.metrics import ranking_metrics, target_ranks


def test_metrics_match_hand_computed_values():
    ranks = [1, 3, 12, 30]
    m = ranking_metrics(ranks)
    assert m["recall@10"] == pytest.approx(2 / 4)
    assert m["recall@20"] == pytest.approx(3 / 4)
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(2) + 1 / math.log2(4)) / 4)
    assert m["ndcg@20"] == pytest.approx((1 + 0.5 + 1 / math.log2(13)) / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 12 + 1 / 30) / 4)


def test_ranks_exclude_history_but_not_target():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.4]])
    # user 0: target item 2; items 0 and 1 are history, so the target ranks first
    # user 1: target item 0 with nothing excluded: last of four
    assert target_ranks(scores, [2, 0], [[0, 1], []]) == [1, 4]
    # a target that also appears in the history is still ranked
    assert target_ranks(scores, [1], [[1, 0]])[0] == 1


def test_ties_count_against_the_target():
    scores = torch.zeros(1, 5)
    assert target_ranks(scores, [3], [[]]) == [5]


def test_empty_ranks_give_zero_metrics():
    assert all(v == 0.0 for v in ranking_metrics([]).values())
