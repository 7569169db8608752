"""Federations of organisations with their own users: the multi-site benchmarks.

Real federations are organisations with their own users, many of them small, often carrying
overlapping catalogues under their own IDs. Two partitions of one data set model that:

- ``sites``: users assigned *disjointly* (seeded) to sites of unequal sizes (``data.site_users``,
  e.g. 2000, 1000, 500, 250, 125); each site carries its own random share of the catalogue
  (``data.catalogue_share``) and sees its users' interactions on it;
- ``domains``: disjoint users *and* genre catalogues: an item belongs to the domain of its
  first-listed genre, a user to the domain holding most of their interactions (and keeps only
  those), so the sites are as large or small as the data makes them.

Either way every site renames its items (``NAME-iNNNNN``, in random order) and its users: nothing
but an item's text links two sites, as between real organisations.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter, defaultdict

from shared.data import DataError, Interaction
from shared.text import Item

Part = tuple[list[Item], list[Interaction]]
# ML-1M's genres by domain (an item's first-listed genre decides); Documentary and Western
# films belong to none and are left out.
DOMAIN_GROUPS: dict[str, tuple[str, ...]] = {
    "action": ("Action", "Adventure", "Sci-Fi"),
    "comedy": ("Comedy", "Romance"),
    "drama": ("Drama", "War"),
    "crime": ("Crime", "Thriller", "Mystery", "Film-Noir"),
    "family": ("Children's", "Animation", "Musical", "Fantasy"),
    "horror": ("Horror",),
}


def split_into_sites(
    items: list[Item],
    interactions: list[Interaction],
    sizes: list[int],
    *,
    catalogue_share: float,
    min_user_interactions: int = 3,
    seed: int = 0,
) -> dict[str, Part]:
    """``site1`` … ``siteN`` (largest first): disjoint users, an own share of the catalogue each."""
    by_user = _by_user(interactions)
    users = sorted(by_user)
    rng = random.Random(f"sites:{seed}")
    rng.shuffle(users)
    if sum(sizes) > len(users):
        raise DataError(
            f"data.site_users asks for {sum(sizes)} users in all; the data set has {len(users)}"
        )
    out: dict[str, Part] = {}
    start = 0
    for k, size in enumerate(sorted(sizes, reverse=True), start=1):
        name = f"site{k}"
        site_users = users[start : start + size]
        start += size
        site_rng = random.Random(f"sites:{seed}:{name}")
        carried = {i.item_id for i in items if site_rng.random() < catalogue_share}
        out[name] = _site(name, items, carried, site_users, by_user, min_user_interactions, seed)
    return out


def split_into_domains(
    items: list[Item],
    interactions: list[Interaction],
    *,
    groups: dict[str, tuple[str, ...]] = DOMAIN_GROUPS,
    min_user_interactions: int = 3,
    seed: int = 0,
) -> dict[str, Part]:
    """One site per domain: its genre's items, and the users who interact with it most."""
    of_genre = {g: name for name, genres in groups.items() for g in genres}
    domain = {i.item_id: of_genre.get(i.categories[0]) for i in items if i.categories}
    by_user = _by_user(interactions)
    members: dict[str, list[str]] = defaultdict(list)
    for user in sorted(by_user):
        counts = Counter(d for it in by_user[user] if (d := domain.get(it.item_id)))
        if counts:  # ties: the domain listed first in ``groups``
            best = max(counts.values())
            members[next(d for d in groups if counts.get(d) == best)].append(user)
    out: dict[str, Part] = {}
    for name in groups:
        carried = {item_id for item_id, d in domain.items() if d == name}
        out[name] = _site(name, items, carried, members[name], by_user, min_user_interactions, seed)
    return out


def _by_user(interactions: list[Interaction]) -> dict[str, list[Interaction]]:
    out: dict[str, list[Interaction]] = defaultdict(list)
    for it in interactions:
        out[it.user_id].append(it)
    return out


def _site(
    name: str,
    items: list[Item],
    carried: set[str],
    users: list[str],
    by_user: dict[str, list[Interaction]],
    min_user_interactions: int,
    seed: int,
) -> Part:
    """The site's users (renamed) with enough interactions on its items, and those items under
    the site's own IDs."""
    kept = []
    for user in users:
        own = [it for it in by_user[user] if it.item_id in carried]
        if len(own) >= min_user_interactions:
            kept.append(own)
    if not kept:
        raise DataError(f"site '{name}' has no user with {min_user_interactions} interactions")
    used = sorted({it.item_id for own in kept for it in own})
    random.Random(f"ids:{seed}:{name}").shuffle(used)
    item_id = {old: f"{name}-i{k:05d}" for k, old in enumerate(used)}
    original = {i.item_id: i for i in items}
    site_items = [
        dataclasses.replace(original[old], item_id=item_id[old])
        for old in sorted(used, key=item_id.get)
    ]
    site_interactions = [
        Interaction(f"{name}-u{u:05d}", item_id[it.item_id], it.timestamp, it.rating)
        for u, own in enumerate(kept)
        for it in own
    ]
    return site_items, site_interactions
