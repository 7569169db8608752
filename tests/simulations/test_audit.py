"""The membership-inference audit's statistics on hand-made scores, and its command end to end."""

import json
import math

import numpy as np
import pytest

from simulations.audit import attack_metrics, dp_tpr_bound, split_members
from tests.simulations.compare.test_data import make_platform


def test_a_perfect_attack_and_a_coin_flip():
    rng = np.random.default_rng(0)
    perfect = attack_metrics(rng.normal(10, 1, 300), rng.normal(0, 1, 300))
    assert perfect["auc"]["value"] == 1.0 and perfect["tpr@0.01"]["value"] == 1.0
    flip = attack_metrics(rng.normal(0, 1, 2000), rng.normal(0, 1, 2000))
    assert flip["auc"]["low"] < 0.5 < flip["auc"]["high"]
    assert flip["tpr@0.01"]["value"] < 0.03


def test_the_dp_bound():
    assert dp_tpr_bound(0.0, 0.0, 0.01) == pytest.approx(0.01)  # ε = 0: no better than chance
    assert dp_tpr_bound(1.0, 1e-5, 0.01) == pytest.approx(math.e * 0.01 + 1e-5)
    assert dp_tpr_bound(8.0, 1e-5, 0.01) == pytest.approx(1 - math.exp(-8) * (1 - 1e-5 - 0.01))
    assert dp_tpr_bound(math.inf, 0.0, 0.001) == 1.0


def test_members_and_non_members_are_disjoint_halves():
    data = make_platform("p", [[0, 1, 2, 3, 4]] * 10, items=5)
    members, others = split_members(data, seed=3)
    assert members.num_users == 5 and len(others) == 5
    assert not {data.users.index(u) for u in members.users} & set(others)


@pytest.mark.integration
def test_audit_end_to_end_on_a_small_movielens(tmp_path):
    from simulations.cli import main

    code = main(
        [
            "audit", "--out", str(tmp_path), "--set", "data.max_users=40", "--set",
            "federation.rounds=1", "--set", "train.steps=2", "--set", "train.lora_steps=0",
            "--set", "train.personalize_steps=2", "--set", "privacy.accountant=rdp",
        ]
    )  # fmt: skip
    assert code == 0
    results = json.loads((tmp_path / "audit.json").read_text())
    assert set(results["models"]) == {
        "dp/global",
        "dp/personalized",
        "no_dp/global",
        "no_dp/personalized",
    }
    for stats in results["models"].values():
        assert 0 <= stats["auc"]["low"] <= stats["auc"]["value"] <= stats["auc"]["high"] <= 1
    assert "DP bound" in (tmp_path / "audit.md").read_text()
    assert results["commit"] and results["created"]
