"""Summaries over seeds: per-site user counts and the bootstrap interval over users."""

from shared.metrics import bootstrap_interval
from simulations.compare.data import slice_metrics
from simulations.compare.records import INTERVAL_KEY, Method, RunRecord
from simulations.compare.results import summarize_runs


def _run(seed: int, ranks: dict[str, list[int]]) -> RunRecord:
    test = {
        name: slice_metrics(rs, {"all": list(range(len(rs))), "cold_users": [], "cold_items": []})
        for name, rs in ranks.items()
    }
    return RunRecord(
        key=f"local_only/{seed}",
        method=Method.LOCAL_ONLY,
        seed=seed,
        epsilon=8.0,
        trained_on=list(ranks),
        seconds=1.0,
        test=test,
        ranks=ranks,
        rounds=[],
    )


def test_interval_is_over_users_of_the_seed_mean():
    # user 0 is a hit at rank 1 in both seeds, user 1 in one seed only, the rest never
    small = {"s": [1, 1, 50, 50, 50, 50, 50, 50]}
    other = {"s": [1, 50, 50, 50, 50, 50, 50, 50]}
    cell = summarize_runs([_run(0, small), _run(1, other)])[Method.LOCAL_ONLY].platforms["s"]["all"]
    assert cell.users == 8
    low, high = cell.interval
    mean = cell.metrics["ndcg@10"].mean
    assert mean == (2 / 8 + 1 / 8) / 2
    assert 0.0 <= low < mean < high <= 1.0
    # users resampled with their figure averaged over the seeds (1, 0.5, 0, ...), not the runs pooled
    assert (low, high) == bootstrap_interval([1.0, 0.5] + [0.0] * 6)
    assert cell.to_json()[INTERVAL_KEY] == [round(low, 6), round(high, 6)]


def test_a_small_site_has_a_wider_interval_than_a_large_one_with_the_same_mean():
    ranks = {"small": [1, 50] * 10, "large": [1, 50] * 1000}
    cells = summarize_runs([_run(0, ranks)])[Method.LOCAL_ONLY].platforms
    small, large = cells["small"]["all"].interval, cells["large"]["all"].interval
    assert small[0] < large[0] < 0.5 < large[1] < small[1]
    assert large[1] - large[0] < (small[1] - small[0]) / 5  # ~ 1/sqrt(100)


def test_other_slices_carry_no_interval():
    cells = summarize_runs([_run(0, {"s": [1, 2, 3]})])[Method.LOCAL_ONLY].platforms["s"]
    assert INTERVAL_KEY in cells["all"].to_json()
    assert all(cell.interval is None for name, cell in cells.items() if name != "all")
