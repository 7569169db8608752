"""The targets a comparison checks, on hand-made summaries."""

import math

import pytest

from simulations.compare import targets as compare_targets
from simulations.compare.records import Method, MethodSummary, SliceSummary, Stat


def test_mean_std_over_seeds():
    assert Stat.of([0.5]) == Stat(0.5, 0.0, 1)
    stat = Stat.of([0.1, 0.3])
    assert stat.mean == pytest.approx(0.2) and stat.std == pytest.approx(math.sqrt(0.02))


def test_targets_met_and_missed():
    def entry(per: dict[str, float]) -> MethodSummary:
        return MethodSummary(
            seeds=[0],
            epsilon=8.0,
            platforms={
                n: {"all": SliceSummary(5, {"ndcg@10": Stat(v, 0, 1)})} for n, v in per.items()
            },
            mean={"all": {"ndcg@10": Stat(sum(per.values()) / len(per), 0, 1)}},
        )

    summary = {
        "federated_dp": entry({"a": 0.10, "b": 0.20}),
        "federated_dp_personalized": entry({"a": 0.11, "b": 0.21}),
        "centralized": entry({"a": 0.12, "b": 0.20}),
        "local_only": entry({"a": 0.08, "b": 0.21}),
        "zero_shot": entry({"a": 0.05, "b": 0.10}),
        "popularity": entry({"a": 0.11, "b": 0.12}),
        "federated_unseen": entry({"b": 0.11}),
    }
    summary = {Method(m): s for m, s in summary.items()}
    targets = compare_targets.check_targets(summary, ["a", "b"], 8.0)
    assert [t.met for t in targets] == [True, True, False, True, True, True]
    assert "Federated + personalised" in targets[0].target  # the product's final ranking
    assert targets[1].detail == "0.1600"
    assert "b: 0.2100 vs 0.2100 (missed)" in targets[2].detail  # a tie does not beat
    assert targets[4].detail == "0.1600 vs 0.1500"
    assert targets[5].detail == "b: 0.1100 vs 0.1000"
    del summary[Method.CENTRALIZED], summary[Method.FEDERATED_DP_PERSONALIZED]
    again = compare_targets.check_targets(summary, ["a", "b"], 8.0)
    assert "Federated (DP)" in again[0].target and again[0].met is False
    assert again[4].met is None

    # the site's final ranking, and "the model alone": the product's model and the global one
    summary[Method.FEDERATED_DP_PERSONALIZED] = entry({"a": 0.11, "b": 0.21})
    summary[Method.FEDERATED_DP_PERSONALIZED_LOCAL] = entry({"a": 0.15, "b": 0.25})
    summary[Method.ZERO_SHOT_LOCAL] = entry({"a": 0.14, "b": 0.25})
    summary[Method.ITEMKNN] = entry({"a": 0.12, "b": 0.22})
    alone = [
        t for t in compare_targets.check_targets(summary, ["a", "b"], 8.0) if "alone (ε" in t.target
    ]
    assert [t.met for t in alone] == [True, True, False, False]  # a tie with Popularity: ≥
    assert "Federated + personalised (DP) alone" in alone[0].target
    assert "global federated DP model alone" in alone[2].target
    assert alone[1].detail == "0.1600 vs 0.1700 = 0.941×"
