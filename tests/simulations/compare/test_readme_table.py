from simulations.compare.readme_table import main, readme_table


def _stat(mean: float, std: float = 0.0, n: int = 1) -> dict:
    return {"mean": mean, "std": std, "n": n}


def _results() -> dict:
    def summary(value: float, n: int, epsilon=None) -> dict:
        slices = {"all": {"ndcg@10": _stat(value, 0.01, n), "recall@10": _stat(2 * value, 0, n)}}
        return {
            "epsilon": epsilon,
            "platforms": {"a": slices, "b": {"all": {"ndcg@10": _stat(value / 2, 0.0, n)}}},
            "mean": slices,
        }

    return {
        "platforms": ["a", "b"],
        "summary": {
            "federated_dp": summary(0.2, 3, 8.0),
            "popularity": summary(0.1, 1),
            "federated_eps": summary(0.5, 3, 1.0),
        },
        "unseen_platform": {
            "platform": "b",
            "methods": {"federated_unseen": {"ndcg@10": _stat(0.03)}},
        },
    }


def test_rows_follow_the_summary_order_with_seeds_spread_and_the_unseen_row_last():
    lines = readme_table(_results()).splitlines()
    assert lines[0].startswith("| method | a | b | **mean** |")
    assert lines[2].startswith("| Popularity | 0.1000 | 0.0500 | **0.1000** | 0.2000 |")
    assert lines[3].startswith("| Federated (DP) | 0.2000 ± 0.0100 | 0.1000 ± 0.0000 |")
    assert lines[-1] == "| Federated without b (DP), ranking b | – | 0.0300 | – | – | – | – |"
    assert not any("0.5000" in line for line in lines)  # the ε sweep has its own table


def test_an_unreadable_file_is_an_error_naming_it(tmp_path, capsys):
    assert main([str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err


def test_intervals_add_each_sites_users_and_its_interval_over_them():
    results = _results()
    results["platforms"] = {"a": {"users": 2000}, "b": {"users": 125}}
    results["summary"]["popularity"]["platforms"]["b"]["all"]["ndcg@10_interval95"] = [0.01, 0.09]
    lines = readme_table(results, intervals=True).splitlines()
    assert lines[0].startswith("| method | a (2000 users) | b (125 users) | **mean** |")
    assert lines[2].startswith("| Popularity | 0.1000 | 0.0500 [0.010, 0.090] | **0.1000** |")
    assert "[" not in readme_table(results)  # without --intervals: the plain table
