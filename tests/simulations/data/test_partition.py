import pytest

from shared.config import DataConfig
from shared.data import Interaction, load_platform
from shared.text import Item
from simulations.data.partition import item_platform, prepare_platforms, split_by_category

GROUPS = {"a": ("Action", "Sci-Fi"), "c": ("Comedy", "Romance")}


def test_item_goes_to_its_majority_group_ties_to_first_category():
    assert item_platform(Item("1", "x", categories=("Comedy", "Action", "Sci-Fi")), GROUPS) == "a"
    assert item_platform(Item("2", "x", categories=("Romance", "Action")), GROUPS) == "c"
    assert item_platform(Item("3", "x", categories=("Western",)), GROUPS) is None


def test_platforms_share_no_item_and_no_user_id():
    items = [
        Item(str(i), f"t{i}", categories=("Action",) if i < 5 else ("Comedy",)) for i in range(10)
    ]
    inter = [Interaction(f"p{u}", str(i), float(i)) for u in range(4) for i in range(10)]
    parts = split_by_category(items, inter, ["a", "c"], groups=GROUPS)
    a_items = {i.item_id for i in parts["a"][0]}
    c_items = {i.item_id for i in parts["c"][0]}
    assert a_items == {"0", "1", "2", "3", "4"} and not a_items & c_items
    a_users = {it.user_id for it in parts["a"][1]}
    c_users = {it.user_id for it in parts["c"][1]}
    assert len(a_users) == len(c_users) == 4 and not a_users & c_users
    assert not a_users & {f"p{u}" for u in range(4)}  # original IDs never leave the split
    assert all(it.item_id in a_items for it in parts["a"][1])


def test_max_users_and_unknown_platform():
    items = [Item(str(i), f"t{i}", categories=("Action",)) for i in range(5)]
    inter = [Interaction(f"p{u}", str(i), float(i)) for u in range(6) for i in range(5)]
    parts = split_by_category(items, inter, ["a"], groups=GROUPS, max_users=2)
    assert len({it.user_id for it in parts["a"][1]}) == 2
    with pytest.raises(ValueError, match="unknown platform"):
        split_by_category(items, inter, ["zzz"], groups=GROUPS)


def test_movielens_100k_three_genre_platforms(tmp_path):
    names = prepare_platforms(DataConfig(max_users=50), tmp_path / "p")
    assert names == ["action", "comedy", "drama"]
    loaded = [load_platform(tmp_path / "p" / n, n) for n in names]
    item_sets = [{i.item_id for i in d.items} for d in loaded]
    assert all(len(s) > 50 for s in item_sets)
    assert not (
        item_sets[0] & item_sets[1] or item_sets[0] & item_sets[2] or item_sets[1] & item_sets[2]
    )
    for d in loaded:
        assert d.num_users == 50
        assert all(len(s) >= 3 for s in d.sequences)


def test_user_folder_is_one_platform(tmp_path, platform_dir):
    names = prepare_platforms(DataConfig(dataset=str(platform_dir)), tmp_path / "p")
    assert names == [platform_dir.name]
