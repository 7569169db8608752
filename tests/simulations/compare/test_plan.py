"""What a comparison runs: ε, methods, seeds, --quick, the unseen platform."""

import math

import pytest

from simulations.cli import build_parser, main
from simulations.compare import plan as compare_plan


def test_parse_epsilons():
    assert compare_plan.parse_epsilons("8, 1,inf,2,8") == [1.0, 2.0, 8.0, math.inf]
    for bad, message in (("abc", "not a number"), ("0", "> 0"), ("-1", "> 0"), (",", "names no")):
        with pytest.raises(ValueError, match=message):
            compare_plan.parse_epsilons(bad)


def test_bad_epsilons_is_a_clear_cli_error(tmp_path, capsys):
    assert main(["compare", "--out", str(tmp_path), "--epsilons", "1,abc"]) == 2
    err = capsys.readouterr().err
    assert "--epsilons: 'abc' is not a number" in err and "Traceback" not in err


def test_quick_defaults_and_set_overrides(tmp_path):
    def plan(*extra):
        args = build_parser().parse_args(["compare", "--out", str(tmp_path), *extra])
        return compare_plan.compare_plan(args)

    quick = plan("--quick", "--set", "federation.rounds=1")
    assert quick.seeds == [0] and quick.epsilons == [8.0, math.inf]
    assert quick.cfg.data.max_users == 60
    assert quick.curve_users == quick.cfg.federation.eval_users == 30
    assert quick.cfg.federation.rounds == 1  # --set wins over --quick
    full = plan("--seeds", "2", "--data", "ml-1m")
    assert full.seeds == [0, 1] and full.epsilons == [1.0, 2.0, 4.0, 8.0, math.inf]
    assert full.cfg.data.dataset == "ml-1m" and full.cfg.federation.rounds == 5
    assert full.federated_epsilons == [1.0, 2.0, 4.0, 8.0, math.inf]
    cfg = full.config_for(1, math.inf)
    assert not cfg.privacy.enabled and cfg.train.seed == 1 and cfg.federation.seed == 1
    # the non-private reference's own recipe: dropout, which DP training goes without
    assert cfg.model.dropout == 0.2 and full.config_for(0, 8.0).model.dropout == 0.0
    assert full.config_for(0, 2.0).privacy.epsilon == 2.0
    with pytest.raises(ValueError, match="--seeds"):
        plan("--seeds", "0")


def test_resolve_unseen():
    assert compare_plan.resolve_unseen(None, ["a", "b", "c"]) == "c"
    assert compare_plan.resolve_unseen(None, ["a"]) is None
    assert compare_plan.resolve_unseen("none", ["a", "b"]) is None
    assert compare_plan.resolve_unseen("a", ["a", "b"]) == "a"
    with pytest.raises(ValueError, match="no such platform"):
        compare_plan.resolve_unseen("zzz", ["a", "b"])


def test_parse_methods():
    assert compare_plan.parse_methods(None) == compare_plan.TRAINED_METHODS
    assert compare_plan.parse_methods("centralized, federated_dp") == (
        "federated_dp",
        "centralized",
    )
    for bad in ("popularity", "federated", ","):
        with pytest.raises(ValueError, match="choose from"):
            compare_plan.parse_methods(bad)
