"""The multi-site partitions: disjoint users, per-site item IDs, text the only link."""

import random
from collections import Counter

import pytest

from shared.data import DataError, Interaction
from shared.text import Item
from simulations.data.sites import split_into_domains, split_into_sites

GENRES = ("Action", "Comedy", "Drama", "Horror")


def synthetic(users: int = 300, items: int = 80, seed: int = 0):
    rng = random.Random(seed)
    catalogue = [
        Item(f"m{k}", f"film {k}", str(1950 + k), (GENRES[k % 4], GENRES[(k + 1) % 4]))
        for k in range(items)
    ]
    interactions = [
        Interaction(f"u{u}", f"m{m}", float(t))
        for u in range(users)
        for t, m in enumerate(rng.sample(range(items), rng.randint(5, 25)))
    ]
    return catalogue, interactions


def _original_users(part, interactions):
    """Each site user's original ID, found by their exact (timestamp, item text) history."""
    items, site_inter = part
    text = {i.item_id: i.title for i in items}
    history: dict[str, set] = {}
    for it in site_inter:
        history.setdefault(it.user_id, set()).add((it.timestamp, text[it.item_id]))
    by_original: dict[str, set] = {}
    for it in interactions:
        by_original.setdefault(it.user_id, set()).add((it.timestamp, f"film {it.item_id[1:]}"))
    return {u: next(o for o, h in by_original.items() if hist <= h) for u, hist in history.items()}


def test_sites_have_disjoint_users_their_own_ids_and_shares_of_the_catalogue():
    catalogue, interactions = synthetic()
    parts = split_into_sites(catalogue, interactions, [40, 120, 80], catalogue_share=0.6, seed=1)
    assert list(parts) == ["site1", "site2", "site3"]  # largest first
    seen_users: set[str] = set()
    for name, (items, site_inter) in parts.items():
        ids = {i.item_id for i in items}
        assert all(i.startswith(f"{name}-i") for i in ids)  # renamed: nothing links two sites…
        assert all(it.item_id in ids and it.user_id.startswith(f"{name}-u") for it in site_inter)
        assert 0.4 * len(catalogue) < len(items) < 0.8 * len(catalogue)  # …but the text
        originals = set(_original_users((items, site_inter), interactions).values())
        assert not originals & seen_users  # every person is a user of one site only
        seen_users |= originals
    sizes = [len({it.user_id for it in p[1]}) for p in parts.values()]
    assert sizes[0] <= 120 and sizes[0] > sizes[1] > sizes[2]
    titles = [{i.title for i in items} for items, _ in parts.values()]
    assert titles[0] & titles[1]  # the catalogues overlap in text
    again = split_into_sites(catalogue, interactions, [40, 120, 80], catalogue_share=0.6, seed=1)
    assert again == parts  # seeded
    other = split_into_sites(catalogue, interactions, [40, 120, 80], catalogue_share=0.6, seed=2)
    assert other != parts


def test_sites_refuse_more_users_than_the_data_has():
    catalogue, interactions = synthetic(users=50)
    with pytest.raises(DataError, match="asks for 60 users"):
        split_into_sites(catalogue, interactions, [30, 30], catalogue_share=0.6)


def test_domains_split_users_and_catalogue_by_genre():
    catalogue, interactions = synthetic()
    groups = {"action": ("Action",), "comedy": ("Comedy",), "drama": ("Drama", "Horror")}
    parts = split_into_domains(catalogue, interactions, groups=groups)
    assert list(parts) == ["action", "comedy", "drama"]
    seen: set[str] = set()
    for name, (items, site_inter) in parts.items():
        assert {i.categories[0] for i in items} <= set(groups[name])  # its genre's items only
        originals = set(_original_users((items, site_inter), interactions).values())
        assert not originals & seen
        seen |= originals
        assert min(Counter(it.user_id for it in site_inter).values()) >= 3
