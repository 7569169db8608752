"""The multi-site targets, on hand-made summaries."""

from simulations.compare.records import Method, MethodSummary, SliceSummary, Stat
from simulations.compare.site_targets import site_targets

M = Method
USERS = {"big": 2000, "mid": 400, "tiny": 100}


def _entry(per: dict[str, float]) -> MethodSummary:
    return MethodSummary(
        seeds=[0],
        epsilon=8.0,
        platforms={n: {"all": SliceSummary(5, {"ndcg@10": Stat(v, 0, 1)})} for n, v in per.items()},
        mean={"all": {"ndcg@10": Stat(sum(per.values()) / len(per), 0, 1)}},
    )


def _summary(**changes: dict[str, float]) -> dict[Method, MethodSummary]:
    figures = {
        M.POPULARITY: {"big": 0.03, "mid": 0.03, "tiny": 0.03},
        M.ITEMKNN: {"big": 0.04, "mid": 0.04, "tiny": 0.04},
        M.EASE: {"big": 0.06, "mid": 0.05, "tiny": 0.04},
        M.ZERO_SHOT: {"big": 0.01, "mid": 0.01, "tiny": 0.01},
        M.LOCAL_ONLY: {"big": 0.050, "mid": 0.020, "tiny": 0.010},
        M.FEDERATED_DP_PERSONALIZED: {"big": 0.055, "mid": 0.035, "tiny": 0.025},
        M.LOCAL_ONLY_LOCAL: {"big": 0.065, "mid": 0.050, "tiny": 0.040},
        M.FEDERATED_DP_PERSONALIZED_LOCAL: {"big": 0.068, "mid": 0.060, "tiny": 0.045},
        M.FEDERATED_UNSEEN: {"tiny": 0.035},
    }
    figures.update({M(k.replace("__", "+")): v for k, v in changes.items()})
    return {m: _entry(v) for m, v in figures.items()}


def test_every_multi_site_target_met():
    targets = site_targets(_summary(), USERS, "sites", 8.0)
    assert len(targets) == 7 and all(t.met for t in targets), [t for t in targets if not t.met]
    assert "mid, tiny: 0.0300 vs 0.0150 = 2.00×" in targets[0].detail  # the small sites' mean
    assert targets[1].detail.startswith("big:")  # the largest site


def test_each_target_can_be_missed():
    summary = _summary(
        federated_dp_personalized={"big": 0.050, "mid": 0.025, "tiny": 0.010},
        federated_dp_personalized__local={"big": 0.050, "mid": 0.050, "tiny": 0.040},
        federated_unseen={"tiny": 0.015},
    )
    targets = site_targets(summary, USERS, "sites", 8.0)
    assert [t.met for t in targets] == [False] * 7
    assert "big: 0.0500 vs EASE 0.0600 (missed)" in targets[4].detail


def test_the_cross_domain_variant_has_its_own_targets_and_genres_none():
    domains = site_targets(_summary(), USERS, "domains", 8.0)
    assert len(domains) == 2 and "1.3×" in domains[0].target
    assert site_targets(_summary(), USERS, "genres", 8.0) == []


def test_a_method_that_did_not_run_is_not_computable():
    summary = _summary()
    del summary[M.LOCAL_ONLY_LOCAL]
    targets = site_targets(summary, USERS, "sites", 8.0)
    assert [t.met for t in targets].count(None) == 1
