"""How items become text: the only representation of an item that crosses a platform boundary."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Item:
    item_id: str
    title: str
    year: str = ""
    categories: tuple[str, ...] = field(default_factory=tuple)
    description: str = ""


def item_text(item: Item) -> str:
    """'Title (year). Categories: a, b. description' — missing parts are left out."""
    text = f"{item.title} ({item.year})" if item.year else item.title
    if item.categories:
        text += f". Categories: {', '.join(item.categories)}"
    if item.description:
        text += f". {item.description}"
    return text
