"""`fedxrec compare`: plan parsing, slices, pooling, results.json schema, report, end to end."""

import json
import math
import random

import pytest

from clients.federation.privacy import default_delta
from shared.data import Interaction, PlatformData, write_platform
from shared.metrics import METRIC_NAMES, ranking_metrics
from shared.text import Item
from simulations import compare
from simulations.baselines import baseline_ranks, itemknn_scores, popularity_scores
from simulations.cli import build_parser, main
from simulations.compare import data as compare_data
from simulations.compare import plan as compare_plan
from simulations.compare import targets as compare_targets
from simulations.compare.records import Method, MethodSummary, SliceSummary, Stat
from tests.clients.scorer.support import save_tiny_encoder
from tests.conftest import WORDS, make_tiny_recommender

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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
    assert full.cfg.data.dataset == "ml-1m" and full.cfg.federation.rounds == 3
    assert full.federated_epsilons == [1.0, 2.0, 4.0, 8.0, math.inf]
    cfg = full.config_for(1, math.inf)
    assert not cfg.privacy.enabled and cfg.train.seed == 1 and cfg.federation.seed == 1
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


def make_platform(name: str, sequences: list[list[int]], items: int) -> PlatformData:
    return PlatformData(
        name=name,
        items=[Item(f"i{k}", f"title {k}") for k in range(items)],
        users=[f"u{k}" for k in range(len(sequences))],
        sequences=sequences,
    )


def test_slices_cold_users_and_cold_items():
    # training parts: [0,1,2,3], [0,1], [0] -> item 0 has 3 training interactions, item 1 has 2
    data = make_platform("p", [[0, 1, 2, 3, 4, 5], [0, 1, 2, 3], [0, 4, 1]], items=6)
    slices = compare_data.platform_slices(data)
    assert slices["all"] == [0, 1, 2]
    assert slices["cold_users"] == [1, 2]  # 6 interactions is not cold, 4 and 3 are
    assert slices["cold_items"] == [0, 1, 2]  # every test item has ≤ 5 training interactions
    # training parts: [0,1] six times and [1]: item 0 has 6 training interactions, so the last
    # user, whose test item is 0, is not in the cold-item slice; the others' test item 3 is
    busy = make_platform("q", [[0, 1, 2, 3]] * 6 + [[1, 2, 0]], items=4)
    assert compare_data.platform_slices(busy)["cold_items"] == list(range(6))


def test_slice_metrics_empty_slice_has_no_metrics():
    out = compare_data.slice_metrics([1, 3], {"all": [0, 1], "cold_users": []})
    assert out["all"] == {**ranking_metrics([1, 3]), "users": 2}
    assert out["cold_users"] == {"users": 0}


def test_pool_platforms_keeps_users_and_items_apart():
    a = make_platform("a", [[0, 1, 2]], items=3)
    b = make_platform("b", [[2, 0, 1], [1, 2, 0]], items=3)
    pooled = compare_data.pool_platforms([a, b])
    assert pooled.num_users == 3 and len(pooled.items) == 6
    assert pooled.users == ["a/u0", "b/u0", "b/u1"]
    assert [i.item_id for i in pooled.items][:4] == ["a/i0", "a/i1", "a/i2", "b/i0"]
    assert pooled.sequences == [[0, 1, 2], [5, 3, 4], [4, 5, 3]]
    assert pooled.item_texts[3] == b.item_texts[0]  # the text is what the model sees: unchanged


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


# ---- end to end on tiny platforms with the tiny random encoder --------------------------------


@pytest.fixture(scope="module")
def tiny_compare(tmp_path_factory, tiny_vocab):
    root = tmp_path_factory.mktemp("compare")
    words = WORDS.split()
    rng = random.Random(0)
    for name in ("alpha", "beta", "gamma"):
        items = [
            Item(f"{name}{k}", " ".join(rng.sample(words, 2)), year=str(1980 + k))
            for k in range(12)
        ]
        interactions = [
            Interaction(f"u{u}", f"{name}{rng.randrange(12)}", float(t))
            for u in range(9)
            for t in range(rng.randint(3, 8))
        ]
        write_platform(root / "data" / name, items, interactions)
    out = root / "out"
    encoder = save_tiny_encoder(tiny_vocab, root / "encoder")
    argv = [
        "compare", "--out", str(out), "--data", str(root / "data"), "--seeds", "2",
        "--epsilons", "8,inf", "--set", "federation.rounds=1", "--set", "train.batch_size=4",
        "--set", "train.steps=2", "--set", "train.lora_steps=1", "--set", "train.personalize_steps=1",
        "--set", "privacy.accountant=rdp", "--set", "model.history_items=10",
        "--set", "model.max_item_tokens=16", "--set", f"model.encoder={encoder}",
    ]  # fmt: skip
    assert compare.run(build_parser().parse_args(argv)) == 0
    return out, argv


EXPECTED_RUNS = {
    "popularity": [None],
    "itemknn": [None],
    "ease": [None],
    "zero_shot": [None],
    "zero_shot+local": [None],
    "federated_dp": [0, 1],
    "federated_dp+local": [0, 1],
    "federated_dp_personalized": [0, 1],
    "federated_dp_personalized+local": [0, 1],
    "local_only": [0, 1],
    "local_only+local": [0, 1],
    "federated_dp_head_only": [0, 1],
    "federated_no_dp": [0, 1],
    "centralized": [0, 1],
    "centralized+local": [0, 1],
    "federated_unseen": [0, 1],
}


def test_results_json_schema(tiny_compare):
    tiny_compare, _ = tiny_compare
    text = (tiny_compare / "results.json").read_text()
    results = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert results["schema_version"] == 2 and results["complete"] is True
    for key in ("dataset", "split", "seeds", "epsilons", "delta", "config", "commit", "machine"):
        assert key in results
    assert results["seeds"] == [0, 1] and results["epsilons"] == [8.0, "inf"]
    assert results["product_epsilon"] == 8.0
    names = ["alpha", "beta", "gamma"]
    assert list(results["platforms"]) == names
    assert set(results["delta"]) == set(names)
    for name, platform in results["platforms"].items():
        assert results["delta"][name] == pytest.approx(default_delta(platform["users"]))
        assert set(platform["slices"]) == {"cold_users", "cold_items"}
    runs: dict[str, list] = {}
    for run in results["runs"]:
        runs.setdefault(run["method"], []).append(run)
    assert {m: [r["seed"] for r in rs] for m, rs in runs.items()} == EXPECTED_RUNS
    for run in results["runs"]:
        evaluated = ["gamma"] if run["method"] == "federated_unseen" else names
        assert list(run["test"]) == evaluated
        for name in evaluated:
            cell = run["test"][name]
            assert set(cell) == {"all", "cold_users", "cold_items"}
            assert set(METRIC_NAMES) <= set(cell["all"])
            # every figure can be checked from the stored per-user ranks
            ranks = run["ranks"][name]
            assert len(ranks) == results["platforms"][name]["users"]
            for metric, value in ranking_metrics(ranks).items():
                assert cell["all"][metric] == pytest.approx(value)
            cold = [ranks[u] for u in results["platforms"][name]["slices"]["cold_users"]]
            if cold:
                assert cell["cold_users"]["ndcg@10"] == pytest.approx(
                    ranking_metrics(cold)["ndcg@10"]
                )
    fed = runs["federated_dp"][0]
    assert [r["round"] for r in fed["rounds"]] == [0, 1]
    assert all(0 < fed["rounds"][1]["epsilon"][n] <= 8.0 for n in names)
    assert runs["federated_no_dp"][0]["epsilon"] == "inf"
    assert runs["federated_unseen"][0]["trained_on"] == ["alpha", "beta"]

    summary = results["summary"]
    assert set(summary) == set(EXPECTED_RUNS)
    stat = summary["federated_dp"]["mean"]["all"]["ndcg@10"]
    assert set(stat) == {"mean", "std", "n"} and stat["n"] == 2
    [point8, point_inf] = results["privacy_utility"]
    assert point8["epsilon"] == 8.0 and point_inf["epsilon"] == "inf"
    assert all(point8["noise_multiplier"][n] > 0 for n in names)
    assert all(point_inf["noise_multiplier"][n] == 0 for n in names)
    assert results["unseen_platform"]["platform"] == "gamma"
    assert {"federated_unseen", "zero_shot", "local_only"} <= set(
        results["unseen_platform"]["methods"]
    )
    assert len(results["targets"]) == 15  # 6 of the model, 5 of the final ranking, 4 "alone"
    for run in runs["federated_dp_personalized+local"]:
        for fit in run["fusion"].values():  # weights on the simplex, fitted on validation
            assert sum(fit["weights"].values()) == pytest.approx(1.0)
            assert {"model", "itemknn", "popularity", "ease"} == set(fit["weights"])
    assert all(t["met"] in (True, False, None) and t["detail"] for t in results["targets"])


def test_baselines_in_results_are_the_baseline_functions(tiny_compare):
    from shared.data import load_platform

    tiny_compare, _ = tiny_compare
    results = json.loads((tiny_compare / "results.json").read_text())
    by_method = {r["method"]: r for r in results["runs"]}
    data = load_platform(tiny_compare / "platforms" / "beta", "beta")
    assert by_method["popularity"]["ranks"]["beta"] == baseline_ranks(
        popularity_scores, data, "test"
    )
    assert by_method["itemknn"]["ranks"]["beta"] == baseline_ranks(itemknn_scores, data, "test")


def test_zero_shot_in_results_is_the_untuned_encoders_ranking(tiny_compare, tiny_vocab):
    from clients.federation.evaluation import split_ranks
    from shared.data import load_platform

    out, argv = tiny_compare
    results = json.loads((out / "results.json").read_text())
    zero = next(r for r in results["runs"] if r["method"] == "zero_shot")
    cfg = compare_plan.compare_plan(build_parser().parse_args(argv)).cfg.model
    rec = make_tiny_recommender(tiny_vocab, cfg, seed=0)  # LoRA B = 0: the base encoder
    for name in ("alpha", "gamma"):
        data = load_platform(out / "platforms" / name, name)
        assert zero["ranks"][name] == split_ranks(rec, data, "test"), name


def test_report_and_plots(tiny_compare):
    tiny_compare, _ = tiny_compare
    report = (tiny_compare / "report.md").read_text()
    for heading in (
        "## Methods side by side",
        "## Targets",
        "## Slices",
        "## Unseen platform: gamma",
        "## Privacy–utility",
        "## Per round",
    ):
        assert heading in report
    for label in (
        "Popularity",
        "ItemKNN",
        "Zero-shot",
        "Local-only",
        "Centralized",
        "Federated + personalised",
        "Federated, head only",
    ):
        assert label in report
    for png in ("methods", "privacy_utility", "ndcg_per_round", "epsilon_per_round"):
        path = tiny_compare / "plots" / f"{png}.png"
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert f"plots/{png}.png" in report


def test_resume_keeps_finished_runs_and_refuses_other_settings(tiny_compare, capsys, monkeypatch):
    from simulations.compare import runner

    out, argv = tiny_compare
    before = json.loads((out / "results.json").read_text())

    def no_training(*args, **kwargs):
        raise AssertionError("a resumed comparison with every run finished trains nothing")

    monkeypatch.setattr(runner, "train", no_training)
    assert compare.run(build_parser().parse_args([*argv, "--resume"])) == 0
    assert "kept from the earlier results.json" in capsys.readouterr().out
    after = json.loads((out / "results.json").read_text())
    assert after["runs"] == before["runs"] and after["complete"]
    # a setting added after the earlier run (absent from its config) counts as its default there
    older = dict(after, config={k: v for k, v in after["config"].items() if "local_" not in k})
    (out / "results.json").write_text(json.dumps(older))
    assert compare.run(build_parser().parse_args([*argv, "--resume"])) == 0
    changed = build_parser().parse_args([*argv, "--resume", "--set", "train.learning_rate=0.05"])
    with pytest.raises(ValueError, match="other settings.*train.learning_rate"):
        compare.run(changed)


def test_local_epsilon_makes_the_fused_counts_dp(tmp_path):
    from simulations.compare.runner import Experiment

    rng = random.Random(1)
    items = [Item(f"m{k}", f"movie {k}") for k in range(15)]
    data = PlatformData(
        name="solo",
        items=items,
        users=[f"u{k}" for k in range(20)],
        sequences=[rng.sample(range(15), rng.randint(4, 8)) for _ in range(20)],
    )

    def local_index(*extra):
        args = build_parser().parse_args(["compare", "--out", str(tmp_path), *extra])
        plan = compare_plan.compare_plan(args)
        exp = Experiment(plan, [data], {}, tmp_path / "work", log=lambda line: None)
        return exp.evaluator.local(data)

    assert local_index().privacy is None
    dp = local_index("--set", "privacy.local_epsilon=2", "--set", "privacy.local_max_items=5")
    assert dp.privacy["epsilon"] == 2 and dp.privacy["max_items_per_user"] == 5
    assert dp.privacy["delta"] == pytest.approx(default_delta(20))


def test_parse_methods():
    assert compare_plan.parse_methods(None) == compare_plan.TRAINED_METHODS
    assert compare_plan.parse_methods("centralized, federated_dp") == (
        "federated_dp",
        "centralized",
    )
    for bad in ("popularity", "federated", ","):
        with pytest.raises(ValueError, match="choose from"):
            compare_plan.parse_methods(bad)


def test_methods_runs_only_the_named_training_methods(tiny_compare, tiny_vocab, tmp_path):
    _, argv = tiny_compare
    argv = [*argv, "--methods", "federated_dp", "--seeds", "1"]
    argv[argv.index("--out") + 1] = str(tmp_path / "subset")
    assert compare.run(build_parser().parse_args(argv)) == 0
    results = json.loads((tmp_path / "subset" / "results.json").read_text())
    assert results["trained_methods"] == ["federated_dp"]
    assert {r["method"] for r in results["runs"]} == {
        "popularity", "itemknn", "ease", "zero_shot", "zero_shot+local", "federated_dp",
        "federated_dp+local", "federated_dp_personalized", "federated_dp_personalized+local",
    }  # fmt: skip
    report = (tmp_path / "subset" / "report.md").read_text()
    assert "Not run in this comparison (--methods): local_only" in report


@pytest.mark.integration
def test_quick_end_to_end_on_movielens(tmp_path, capsys):
    out = tmp_path / "quick"
    code = main(
        [
            "compare", "--out", str(out), "--quick", "--set", "data.max_users=6",
            "--set", "federation.rounds=1", "--set", "model.history_items=10",
            "--set", "model.max_item_tokens=16", "--set", "privacy.accountant=rdp",
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "[compare" in printed and "federated_dp/seed0" in printed  # progress while it runs
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] and results["quick"] and results["dataset"] == "ml-100k"
    assert list(results["platforms"]) == ["action", "comedy", "drama"]
    assert all(p["users"] == 6 for p in results["platforms"].values())
    assert results["unseen_platform"]["platform"] == "drama"
    for run in results["runs"]:
        for name, ranks in run["ranks"].items():
            assert all(1 <= r <= results["platforms"][name]["items"] for r in ranks), run["key"]
    assert (out / "report.md").is_file() and (out / "plots" / "privacy_utility.png").is_file()


def test_commit_named_by_environment_where_there_is_no_git(monkeypatch):
    from simulations.report import code_commit

    monkeypatch.setenv("FEDXREC_COMMIT", "abc1234")
    assert code_commit() == "abc1234"
    monkeypatch.delenv("FEDXREC_COMMIT")
    assert code_commit() not in ("", "abc1234")
