"""Splitting one data set into platforms that share no item and no user ID."""

from __future__ import annotations

import argparse
import hashlib
import random
import re
import shutil
from collections import Counter
from pathlib import Path

from shared.config import PARTITIONS, DataConfig
from shared.data import (
    DataError,
    Interaction,
    find_file,
    load_platform,
    read_interactions,
    read_items,
    write_platform,
)
from shared.text import Item
from simulations.data.movielens import SOURCES, load_movielens
from simulations.data.sites import split_into_domains, split_into_sites

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


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """--data and --partition: which data set, and how it becomes platforms."""
    parser.add_argument(
        "--data", help="ml-100k, ml-1m, or a folder of your own data (data.dataset)"
    )
    parser.add_argument(
        "--partition",
        choices=PARTITIONS,
        help="how a MovieLens data set becomes platforms (data.partition): genres = genre slices "
        "of the same users (default); sites = disjoint users over sites of data.site_users "
        "users, each with its own share of the catalogue under its own IDs; domains = disjoint "
        "users and genre catalogues (large and small sites)",
    )


def data_overrides(args: argparse.Namespace) -> dict[str, str]:
    """The data.* settings --data and --partition give (those given)."""
    flags = {"data.dataset": args.data, "data.partition": getattr(args, "partition", None)}
    return {k: v for k, v in flags.items() if v is not None}


PLATFORM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def prepare_platforms(cfg: DataConfig, root: str | Path) -> list[str]:
    """Write one folder per platform under ``root`` (the simulation's stand-in for each site's
    disk) and return the platform names, in partition-id order.

    Everything is read and validated before ``root`` is touched, and a problem in your own data
    names your file, not the copy. ``data.platforms`` picks platforms (MovieLens genre groups, or
    sub-folders of your data) and ``data.max_users`` keeps at most that many users of each.
    """
    root = Path(root)
    if cfg.dataset in SOURCES:
        parts = _movielens_platforms(cfg)
    elif cfg.partition != "genres":
        raise DataError(
            f"data.partition={cfg.partition} splits a MovieLens data set ({', '.join(SOURCES)}); "
            "your own data's platforms are its folders: leave data.partition at genres"
        )
    else:
        parts = _user_platforms(Path(cfg.dataset), cfg)
    for name in parts:
        check_platform_name(name)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for name, (p_items, p_inter) in parts.items():
        write_platform(root / name, p_items, p_inter)
    return list(parts)


def _movielens_platforms(cfg: DataConfig) -> dict[str, tuple[list[Item], list[Interaction]]]:
    items, interactions = load_movielens(cfg.dataset)
    minimum = cfg.min_user_interactions
    if cfg.partition == "genres":
        return split_by_category(
            items,
            interactions,
            cfg.platform_list or list(GENRE_GROUPS),
            max_users=cfg.max_users,
            min_user_interactions=minimum,
            seed=cfg.seed,
        )
    if cfg.partition == "sites":
        parts = split_into_sites(
            items,
            interactions,
            cfg.site_user_counts,
            catalogue_share=cfg.catalogue_share,
            min_user_interactions=minimum,
            seed=cfg.seed,
        )
    else:
        parts = split_into_domains(
            items, interactions, min_user_interactions=minimum, seed=cfg.seed
        )
    unknown = sorted(set(cfg.platform_list) - set(parts))
    if unknown:
        raise DataError(
            f"--platforms names {', '.join(unknown)}; the {cfg.partition} partition has "
            f"{', '.join(parts)}"
        )
    return {n: p for n, p in parts.items() if not cfg.platform_list or n in cfg.platform_list}


def check_platform_name(name: str) -> None:
    """A platform's name travels in Flower's run config (a comma-separated list) and names its
    folders: letters, digits, '.', '_' and '-' only."""
    if not PLATFORM_NAME.match(name):
        raise DataError(
            f"platform name '{name}' (a folder name) cannot be used: use letters, digits, '.', "
            "'_' and '-' only (no commas, spaces or slashes); rename the folder"
        )


def _user_platforms(
    source: Path, cfg: DataConfig
) -> dict[str, tuple[list[Item], list[Interaction]]]:
    """A user's folder is one platform, or holds one sub-folder per platform; each is validated
    where it is (errors name the user's own files)."""
    if not source.is_dir():
        raise DataError(
            f"data.dataset '{source}' is neither a known data set ({', '.join(SOURCES)}) nor a folder"
        )
    folders = (
        [source] if _is_platform(source) else sorted(p for p in source.iterdir() if _is_platform(p))
    )
    if not folders:
        find_file(source, "interactions")  # raises the error that explains the format
    wanted = cfg.platform_list
    unknown = sorted(set(wanted) - {f.name for f in folders})
    if unknown:
        raise DataError(
            f"--platforms names {', '.join(unknown)}, not platforms of {source} (it has "
            f"{', '.join(f.name for f in folders)})"
        )
    parts = {}
    for folder in folders:
        if wanted and folder.name not in wanted:
            continue
        data = load_platform(folder, folder.name, min_user_interactions=cfg.min_user_interactions)
        keep = set(data.users)
        if cfg.max_users:
            order = sorted(data.users)
            random.Random(_seed(cfg.seed, folder.name)).shuffle(order)
            keep = set(order[: cfg.max_users])
        items = read_items(find_file(folder, "items"))
        interactions = read_interactions(
            find_file(folder, "interactions"), {i.item_id for i in items}
        )
        parts[folder.name] = (items, [it for it in interactions if it.user_id in keep])
    return parts


def _is_platform(folder: Path) -> bool:
    return folder.is_dir() and any(
        (folder / f"interactions{s}").is_file() for s in (".csv", ".jsonl")
    )
