"""A site's private data: reading, validating and splitting it.

A platform folder holds two files (CSV with a header row, or JSON Lines):

- ``interactions.csv`` / ``interactions.jsonl``: ``user_id``, ``item_id``, ``timestamp`` (a number,
  e.g. Unix seconds), optional ``rating``;
- ``items.csv`` / ``items.jsonl``: ``item_id``, ``title``, optional ``categories`` ("a|b" in CSV, a
  list or "a|b" in JSONL), ``year``, ``description``.

Each field's value is checked against its rule (shared/fields.py: which JSON types an id, a title,
a year... may be). Every problem is reported as a ``DataError`` naming the file, the line, the
field and the fix.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from shared import fields
from shared.fields import FieldError, shown
from shared.text import Item, item_text

T = TypeVar("T")

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
ITEM_COLUMNS = ("item_id", "title")


class DataError(ValueError):
    """The site's data files are missing, malformed or inconsistent."""


@dataclass(frozen=True)
class Interaction:
    user_id: str
    item_id: str
    timestamp: float
    rating: float | None = None


@dataclass
class PlatformData:
    """One platform: its catalogue and each user's chronological item sequence (catalogue indices).

    Leave-last-out: the last item is the test target, the second-last the validation target, the
    rest is training history.
    """

    name: str
    items: list[Item]
    users: list[str]
    sequences: list[list[int]]
    times: list[list[float]] | None = None  # each interaction's timestamp, like ``sequences``

    def __post_init__(self) -> None:
        self.item_index = {item.item_id: i for i, item in enumerate(self.items)}
        self._item_texts: list[str] | None = None

    @property
    def num_users(self) -> int:
        return len(self.users)

    @property
    def item_texts(self) -> list[str]:
        if self._item_texts is None:
            self._item_texts = [item_text(i) for i in self.items]
        return self._item_texts

    def train_sequence(self, user: int) -> list[int]:
        return self.sequences[user][:-2]

    def split(self, user: int, split: str) -> tuple[list[int], int]:
        """(history, target) for ``split`` in {"validation", "test"}."""
        seq = self.sequences[user]
        if split == "validation":
            return seq[:-2], seq[-2]
        if split == "test":
            return seq[:-1], seq[-1]
        raise ValueError(f"unknown split {split!r}; use 'validation' or 'test'")

    def train_item_counts(self) -> list[int]:
        counts = [0] * len(self.items)
        for u in range(self.num_users):
            for i in self.train_sequence(u):
                counts[i] += 1
        return counts


# ---- reading files ------------------------------------------------------------------------------


def find_file(folder: Path, stem: str) -> Path:
    for suffix in (".csv", ".jsonl"):
        path = folder / f"{stem}{suffix}"
        if path.is_file():
            return path
    raise DataError(
        f"{folder}: no {stem}.csv or {stem}.jsonl. A platform folder needs interactions.csv|jsonl "
        "(user_id, item_id, timestamp[, rating]) and items.csv|jsonl (item_id, title[, categories, "
        "year, description])"
    )


def read_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, row) from a CSV or JSONL file, checking the required columns."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.suffix == ".jsonl":
        yield from _read_jsonl(path, required)
    elif path.suffix == ".csv":
        yield from _read_csv(path, required)
    else:
        raise DataError(f"{path}: unsupported file type; use .csv (with a header row) or .jsonl")


def _read_csv(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(
                f"{path}: missing column(s) {', '.join(missing)} in the header row "
                f"(found: {', '.join(header) or 'no header'}); add them"
            )
        reader.fieldnames = header
        for row in reader:
            if None in row:
                raise DataError(f"{path}, line {reader.line_num}: more fields than the header has")
            short = [c for c in required if row.get(c) is None]
            if short:
                raise DataError(
                    f"{path}, line {reader.line_num}: fewer fields than the header has (no "
                    f"{', '.join(short)}); give every row a value for each column"
                )
            yield reader.line_num, row


def _read_jsonl(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}, line {line_no}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {line_no}: expected a JSON object per line")
            missing = [c for c in required if c not in row]
            if missing:
                raise DataError(
                    f"{path}, line {line_no}: missing field(s) {', '.join(missing)}; every line "
                    f"needs {', '.join(required)}"
                )
            yield line_no, row


def _field(where: str, name: str, value: Any, rule: Callable[[Any], T], fix: str = "") -> T:
    """``rule(value)``, or a DataError naming the place, the field, the value and the fix."""
    try:
        return rule(value)
    except FieldError as err:
        raise DataError(
            f"{where}: {name} {shown(value)} {err}{'; ' + fix if fix else ''}"
        ) from None


def item_from_row(row: dict[str, Any], where: str) -> Item:
    """One item from a row of an items file (or a request), every field checked by its rule."""
    item_id = _field(where, "item_id", row.get("item_id"), fields.identifier)
    if not item_id:
        raise DataError(f"{where}: empty item_id; give every item an id")
    title = _field(where, "title", row.get("title"), fields.required_text)
    if not title:
        raise DataError(
            f"{where}: item '{item_id}' has an empty title; items are ranked by their text, "
            "so give it a title"
        )
    return Item(
        item_id=item_id,
        title=title,
        year=_field(where, "year", row.get("year"), fields.year),
        categories=_field(where, "categories", row.get("categories"), fields.categories),
        description=_field(where, "description", row.get("description"), fields.optional_text),
    )


def read_items(path: Path) -> list[Item]:
    items: list[Item] = []
    seen: dict[str, int] = {}
    for line, row in read_rows(path, ITEM_COLUMNS):
        where = f"{path}, line {line}"
        item = item_from_row(row, where)
        if item.item_id in seen:
            raise DataError(
                f"{where}: item '{item.item_id}' is listed twice (first at line "
                f"{seen[item.item_id]}); keep one row per item"
            )
        seen[item.item_id] = line
        items.append(item)
    if not items:
        raise DataError(f"{path}: no items; the catalogue must list at least one item")
    return items


def read_interactions(path: Path, known_items: set[str]) -> list[Interaction]:
    out: list[Interaction] = []
    seen: dict[tuple[str, str, float], int] = {}
    for line, row in read_rows(path, INTERACTION_COLUMNS):
        where = f"{path}, line {line}"
        user = _field(where, "user_id", row.get("user_id"), fields.identifier)
        item = _field(where, "item_id", row.get("item_id"), fields.identifier)
        for name, value in (("user_id", user), ("item_id", item)):
            if not value:
                raise DataError(
                    f"{where}: empty {name}; every interaction names a user and an item"
                )
        ts = _field(
            where,
            "timestamp",
            row.get("timestamp"),
            fields.number,
            "use Unix seconds (or any number that orders a user's interactions in time)",
        )
        if item not in known_items:
            raise DataError(
                f"{where}: item '{item}' is not in the items file; add it to the items file or "
                "remove the interaction"
            )
        rating = _field(
            where,
            "rating",
            row.get("rating"),
            fields.optional_number,
            "leave it empty or give a number",
        )
        key = (user, item, ts)
        if key in seen:
            raise DataError(
                f"{where}: duplicate of line {seen[key]} (same user, item and timestamp); remove "
                "one of them"
            )
        seen[key] = line
        out.append(Interaction(user, item, ts, rating))
    if not out:
        raise DataError(f"{path}: no interactions")
    return out


# ---- building a platform ------------------------------------------------------------------------


def build_platform(
    name: str,
    items: list[Item],
    interactions: list[Interaction],
    *,
    min_user_interactions: int = 3,
) -> PlatformData:
    """Order each user's interactions in time and keep users with enough for leave-last-out."""
    by_user: dict[str, list[tuple[float, int, str]]] = {}
    for order, it in enumerate(interactions):
        by_user.setdefault(it.user_id, []).append((it.timestamp, order, it.item_id))
    index = {item.item_id: i for i, item in enumerate(items)}
    users, sequences, times = [], [], []
    for user in sorted(by_user):
        events = sorted(by_user[user])  # ties keep file order
        if len(events) < min_user_interactions:
            continue
        users.append(user)
        sequences.append([index[item_id] for _, _, item_id in events])
        times.append([t for t, _, _ in events])
    if not users:
        raise DataError(
            f"platform '{name}': no user has {min_user_interactions} or more interactions, which "
            "leave-last-out needs (train, validation, test)"
        )
    return PlatformData(name=name, items=items, users=users, sequences=sequences, times=times)


def load_platform(
    folder: str | Path, name: str = "", *, min_user_interactions: int = 3
) -> PlatformData:
    """Read and validate a platform folder (see the module docstring for the format)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"platform folder {folder} does not exist")
    items = read_items(find_file(folder, "items"))
    interactions = read_interactions(find_file(folder, "interactions"), {i.item_id for i in items})
    return build_platform(
        name or folder.name, items, interactions, min_user_interactions=min_user_interactions
    )


def write_platform(folder: str | Path, items: list[Item], interactions: list[Interaction]) -> Path:
    """Write a platform folder in the JSONL form of the format above."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "items.jsonl").open("w", encoding="utf-8") as fh:
        for item in items:
            row = {
                "item_id": item.item_id,
                "title": item.title,
                "year": item.year,
                "categories": list(item.categories),
                "description": item.description,
            }
            fh.write(json.dumps(row) + "\n")
    with (folder / "interactions.jsonl").open("w", encoding="utf-8") as fh:
        for it in interactions:
            row = {"user_id": it.user_id, "item_id": it.item_id, "timestamp": it.timestamp}
            if it.rating is not None:
                row["rating"] = it.rating
            fh.write(json.dumps(row) + "\n")
    return folder
