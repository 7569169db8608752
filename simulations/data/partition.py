"""Splitting one data set into platforms that share no item and no user ID."""

from __future__ import annotations

import hashlib
import random
import shutil
from collections import Counter
from pathlib import Path

from shared.config import DataConfig
from shared.data import DataError, Interaction, find_file, load_platform, write_platform
from shared.text import Item
from simulations.data.movielens import SOURCES, load_movielens

# MovieLens genres grouped into the demo's platforms: a movie site for each taste.
GENRE_GROUPS: dict[str, tuple[str, ...]] = {
    "action": ("Action", "Adventure", "Sci-Fi", "Thriller", "War", "Western", "Crime", "Fantasy"),
    "comedy": ("Comedy", "Romance", "Children's", "Animation", "Musical"),
    "drama": ("Drama", "Documentary", "Film-Noir", "Mystery", "Horror"),
}


def item_platform(item: Item, groups: dict[str, tuple[str, ...]]) -> str | None:
    """The group most of the item's categories fall in; ties go to its first category's group."""
    of_category = {c: name for name, cats in groups.items() for c in cats}
    votes = Counter(of_category[c] for c in item.categories if c in of_category)
    if not votes:
        return None
    best = max(votes.values())
    for c in item.categories:
        if of_category.get(c) in votes and votes[of_category[c]] == best:
            return of_category[c]
    return None


def split_by_category(
    items: list[Item],
    interactions: list[Interaction],
    platforms: list[str],
    *,
    groups: dict[str, tuple[str, ...]] = GENRE_GROUPS,
    max_users: int = 0,
    min_user_interactions: int = 3,
    seed: int = 0,
) -> dict[str, tuple[list[Item], list[Interaction]]]:
    """Each platform gets its items and its users' interactions on them, users renamed per platform.

    A person active on two platforms becomes two unrelated users: nothing links them in a run.
    """
    unknown = [p for p in platforms if p not in groups]
    if unknown:
        raise DataError(
            f"unknown platform(s) {', '.join(unknown)}; the genre platforms are {', '.join(groups)}"
        )
    home = {item.item_id: item_platform(item, groups) for item in items}
    out = {}
    for name in platforms:
        p_items = [i for i in items if home[i.item_id] == name]
        p_ids = {i.item_id for i in p_items}
        p_inter = [it for it in interactions if it.item_id in p_ids]
        counts = Counter(it.user_id for it in p_inter)
        users = sorted(u for u, n in counts.items() if n >= min_user_interactions)
        rng = random.Random(_seed(seed, name))
        rng.shuffle(users)
        if max_users:
            users = users[:max_users]
        alias = {u: f"{name}-u{k:05d}" for k, u in enumerate(users)}
        p_inter = [
            Interaction(alias[it.user_id], it.item_id, it.timestamp, it.rating)
            for it in p_inter
            if it.user_id in alias
        ]
        used = {it.item_id for it in p_inter}
        out[name] = ([i for i in p_items if i.item_id in used], p_inter)
    return out


def _seed(seed: int, name: str) -> int:
    return int(hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()[:8], 16)


def prepare_platforms(cfg: DataConfig, root: str | Path) -> list[str]:
    """Write one folder per platform under ``root`` (the simulation's stand-in for each site's
    disk) and return the platform names, in partition-id order."""
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    if cfg.dataset in SOURCES:
        items, interactions = load_movielens(cfg.dataset)
        parts = split_by_category(
            items,
            interactions,
            cfg.platform_list,
            max_users=cfg.max_users,
            min_user_interactions=cfg.min_user_interactions,
            seed=cfg.seed,
        )
        for name, (p_items, p_inter) in parts.items():
            write_platform(root / name, p_items, p_inter)
        names = list(parts)
    else:
        names = _copy_user_platforms(Path(cfg.dataset), root)
    for name in names:  # validate now, so a bad file fails before any process starts
        load_platform(root / name, name, min_user_interactions=cfg.min_user_interactions)
    return names


def _copy_user_platforms(source: Path, root: Path) -> list[str]:
    """A user's folder is one platform, or holds one sub-folder per platform."""
    if not source.is_dir():
        raise DataError(
            f"data.dataset '{source}' is neither a known data set ({', '.join(SOURCES)}) nor a folder"
        )
    folders = (
        [source] if _is_platform(source) else sorted(p for p in source.iterdir() if _is_platform(p))
    )
    if not folders:
        find_file(source, "interactions")  # raises the error that explains the format
    names = []
    for folder in folders:
        name = folder.name
        shutil.copytree(folder, root / name)
        names.append(name)
    return names


def _is_platform(folder: Path) -> bool:
    return folder.is_dir() and any(
        (folder / f"interactions{s}").is_file() for s in (".csv", ".jsonl")
    )
