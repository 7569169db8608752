"""The non-private references' early stopping: the round with the best mean validation."""

import pytest

from simulations.compare.federations import best_validation_round
from simulations.compare.records import RoundRecord


def test_best_validation_round_takes_the_best_mean_over_platforms():
    rounds = [
        RoundRecord(0, validation_ndcg={"a": 0.9, "b": 0.9}),  # untrained: never chosen
        RoundRecord(1, validation_ndcg={"a": 0.20, "b": 0.10}),
        RoundRecord(2, validation_ndcg={"a": 0.10, "b": 0.25}),  # best mean (0.175)
        RoundRecord(3, validation_ndcg={"a": 0.30, "b": 0.02}),  # best on a alone
    ]
    assert best_validation_round(rounds) == 2


def test_best_validation_round_keeps_the_earliest_of_equals_and_refuses_no_rounds():
    tied = [RoundRecord(r, validation_ndcg={"a": 0.1}) for r in range(4)]
    assert best_validation_round(tied) == 1
    with pytest.raises(ValueError, match="no trained round"):
        best_validation_round([RoundRecord(0, validation_ndcg={"a": 0.1})])
