"""A comparison's platforms: evaluation slices, pooling (centralized)."""

from shared.data import PlatformData
from shared.metrics import ranking_metrics
from shared.text import Item
from simulations.compare import data as compare_data


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


def test_new_item_slice_from_the_cut_off():
    # ten items; item k first seen at time k (user 0 sees them in order); the newest 20 % of
    # the catalogue (items 8 and 9) appeared at or after the cut-off, time 8
    sequences = [list(range(10)), [1, 2, 9], [0, 3, 8], [2, 4, 5]]
    times = [[float(t) for t in range(10)], [1.0, 20.0, 21.0], [0.0, 8.5, 30.0], [2, 9, 10]]
    data = PlatformData(
        name="p",
        items=[Item(f"i{k}", f"title {k}") for k in range(10)],
        users=[f"u{k}" for k in range(4)],
        sequences=sequences,
        times=times,
    )
    assert compare_data.first_seen(data) == [float(k) for k in range(10)]
    assert compare_data.new_item_cutoff(data) == 8.0
    # test items: 9, 9, 8, 5 -> the first three users' test items are new
    assert compare_data.platform_slices(data)["new_items"] == [0, 1, 2]
    # the counts of the cut-off day: training interactions (all but the last two) before it
    assert compare_data.counted_before(data, 8.0) == [list(range(8)), [1], [0], [2]]


def test_no_new_item_slice_without_timestamps():
    data = make_platform("p", [[0, 1, 2, 3], [1, 2, 3]], items=4)
    assert compare_data.new_item_cutoff(data) is None
    assert compare_data.platform_slices(data)["new_items"] == []


def test_slice_metrics_empty_slice_has_no_metrics():
    out = compare_data.slice_metrics([1, 3], {"all": [0, 1], "cold_users": []})
    assert out["all"] == {**ranking_metrics([1, 3]), "users": 2}
    assert out["cold_users"] == {"users": 0}
    assert compare_data.apart_metrics({"new_items": [2], "x": []}) == {
        "new_items": {**ranking_metrics([2]), "users": 1},
        "x": {"users": 0},
    }


def test_pool_platforms_keeps_users_and_items_apart():
    a = make_platform("a", [[0, 1, 2]], items=3)
    b = make_platform("b", [[2, 0, 1], [1, 2, 0]], items=3)
    pooled = compare_data.pool_platforms([a, b])
    assert pooled.num_users == 3 and len(pooled.items) == 6
    assert pooled.users == ["a/u0", "b/u0", "b/u1"]
    assert [i.item_id for i in pooled.items][:4] == ["a/i0", "a/i1", "a/i2", "b/i0"]
    assert pooled.sequences == [[0, 1, 2], [5, 3, 4], [4, 5, 3]]
    assert pooled.item_texts[3] == b.item_texts[0]  # the text is what the model sees: unchanged
