"""`fedxrec compare` end to end on tiny platforms: results.json schema, report, resume, --methods."""

import json
import random

import pytest

from clients.federation.privacy import default_delta
from shared.data import Interaction, PlatformData, write_platform
from shared.metrics import METRIC_NAMES, ranking_metrics
from shared.text import Item
from simulations import compare
from simulations.baselines import baseline_ranks, itemknn_scores, popularity_scores
from simulations.cli import build_parser, main
from simulations.compare import plan as compare_plan
from simulations.compare.data import counted_before, new_item_cutoff
from tests.clients.scorer.support import save_tiny_encoder
from tests.conftest import WORDS, make_tiny_recommender

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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
        assert set(platform["slices"]) == {"cold_users", "cold_items", "new_items"}
    runs: dict[str, list] = {}
    for run in results["runs"]:
        runs.setdefault(run["method"], []).append(run)
    assert {m: [r["seed"] for r in rs] for m, rs in runs.items()} == EXPECTED_RUNS
    for run in results["runs"]:
        evaluated = ["gamma"] if run["method"] == "federated_unseen" else names
        assert list(run["test"]) == evaluated
        for name in evaluated:
            cell = run["test"][name]
            assert set(cell) == {"all", "cold_users", "cold_items", "new_items"}
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
            new = [ranks[u] for u in results["platforms"][name]["slices"]["new_items"]]
            assert cell["new_items"]["users"] == len(new)
            if new and run["method"] in ("federated_dp", "zero_shot"):  # the model: no counts
                assert cell["new_items"]["ndcg@10"] == pytest.approx(
                    ranking_metrics(new)["ndcg@10"]
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
    assert len(results["targets"]) == 16  # 6 of the model, 6 of the final ranking, 4 "alone"
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
    # the new-item slice: Popularity's counts as they stood on the cut-off day
    new_users = results["platforms"]["beta"]["slices"]["new_items"]
    assert new_users  # the fixture's timestamps leave new items on every platform
    ranks = baseline_ranks(
        popularity_scores,
        data,
        "test",
        new_users,
        counted_before(data, new_item_cutoff(data)),
    )
    new_cell = by_method["popularity"]["test"]["beta"]["new_items"]
    assert new_cell["ndcg@10"] == pytest.approx(ranking_metrics(ranks)["ndcg@10"])


def test_zero_shot_in_results_is_the_untrained_models_ranking(tiny_compare, tiny_vocab):
    """The untrained model: the base encoder (LoRA B = 0) and the seed's fresh head, whitened
    with the platform's own catalogue."""
    import torch

    from clients.federation.evaluation import split_ranks
    from shared.data import load_platform
    from shared.whitening import catalogue_moments, whitening_arrays

    out, argv = tiny_compare
    results = json.loads((out / "results.json").read_text())
    zero = next(r for r in results["runs"] if r["method"] == "zero_shot")
    cfg = compare_plan.compare_plan(build_parser().parse_args(argv)).cfg.model
    for name in ("alpha", "gamma"):
        rec = make_tiny_recommender(tiny_vocab, cfg, seed=0)
        data = load_platform(out / "platforms" / name, name)
        white = whitening_arrays(catalogue_moments(rec.encode(data.item_texts, 16)))
        with torch.no_grad():
            rec.head.adaptor.mean.copy_(torch.as_tensor(white["adaptor.mean"]))
            rec.head.adaptor.whitening.copy_(torch.as_tensor(white["adaptor.whitening"]))
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
