"""How items and users become text: the only representation that crosses a platform boundary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Item:
    item_id: str
    title: str
    year: str = ""
    categories: tuple[str, ...] = field(default_factory=tuple)
    description: str = ""


# Long histories are cut here before tokenising; the token limit then bounds what the model sees.
MAX_HISTORY_ITEMS = 50


def item_text(item: Item) -> str:
    """'Title (year). Categories: a, b. description' — missing parts are left out."""
    text = f"{item.title} ({item.year})" if item.year else item.title
    if item.categories:
        text += f". Categories: {', '.join(item.categories)}"
    if item.description:
        text += f". {item.description}"
    return text


def history_text(history: Sequence[Item]) -> str:
    """The user's history, most recent first (the tokenizer keeps the front when it truncates)."""
    recent = list(history)[::-1][:MAX_HISTORY_ITEMS]
    return "; ".join(f"{i.title} ({i.year})" if i.year else i.title for i in recent)
