"""A catalogue that changes while the service runs: item additions, updates and removals.

The items file stays the operator's; the changes the service takes (``PUT``/``DELETE
/items/{id}``) are appended to a journal beside it, ``ITEMS.changes.jsonl``, one JSON line per
change, flushed to disk before the change is served. The catalogue is the items file with the
journal replayed over it, at every start and reload, so a restart serves what was served.

Crash consistency: a change is one line; a crash in the middle of writing one leaves a torn last
line, which is reported and ignored (the catalogue before that change), and nothing else of the
file is ever rewritten. A damaged line before the last is an error naming it (the file was
edited), never a silently different catalogue. To fold the changes into the items file, stop the
service, write them into it and delete the journal (a ``put`` of an item already there with the
same text changes nothing, so replaying a journal over a file that holds it is harmless).

In the running service a change builds a new snapshot beside the old one (clients/scorer/
live_catalogue.py) and swaps it in, like a reload, without re-encoding the rest.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from shared.data import DataError, item_from_row, read_items
from shared.text import Item

log = logging.getLogger(__name__)

PUT, DELETE = "put", "delete"


def journal_path(items_file: Path) -> Path:
    return items_file.with_name(items_file.name + ".changes.jsonl")


def item_record(item: Item) -> dict[str, Any]:
    record = asdict(item)
    record["categories"] = list(item.categories)
    return record


def append_change(items_file: Path, op: str, item_id: str, item: Item | None = None) -> None:
    """Write one change durably (flushed and fsynced) before it is served."""
    line = {"op": op, "item_id": item_id}
    if item is not None:
        line["item"] = item_record(item)
    path = journal_path(items_file)
    with path.open("ab") as fh:
        fh.write((json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


def read_catalogue(items_file: Path) -> list[Item]:
    """The items file with its journal of changes replayed over it."""
    return replay_catalogue(items_file)[0]


def replay_catalogue(items_file: Path) -> tuple[list[Item], frozenset[str]]:
    """The catalogue, and the ids its journal removed (their interactions are history, not
    errors: the site's counts leave them out)."""
    items = read_items(items_file)
    path = journal_path(items_file)
    if not path.is_file():
        return items, frozenset()
    file_ids = {item.item_id for item in items}
    by_id = {item.item_id: item for item in items}
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    torn = lines[-1]  # after the last newline: empty, or a change cut off by a crash
    if torn:
        log.warning(
            "%s: its last line is incomplete (a change cut off while it was written); "
            "the catalogue is the one before it",
            path,
        )
    for number, line in enumerate(lines[:-1], start=1):
        where = f"{path}, line {number}"
        try:
            change = json.loads(line.decode("utf-8"))
            op, item_id = change["op"], str(change["item_id"])
            if op == PUT:
                item = item_from_row(change["item"], where)
                if item.item_id != item_id:
                    raise ValueError(f"item_id {item_id!r} but the item is {item.item_id!r}")
                by_id[item_id] = item
                file_ids.add(item_id)
            elif op == DELETE:
                by_id.pop(item_id, None)
            else:
                raise ValueError(f"op {op!r} is neither {PUT!r} nor {DELETE!r}")
        except DataError:
            raise
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise DataError(
                f"{where}: not a catalogue change ({type(err).__name__}: {err}); this file is "
                "written by `fedxrec serve` only: restore it, or fold what it holds into the "
                "items file and delete it"
            ) from None
    if not by_id:
        raise DataError(f"{items_file} with {path}: no items left; the catalogue needs one")
    removed = frozenset(i for i in file_ids if i not in by_id)
    return list(by_id.values()), removed  # the file's order, additions after it
