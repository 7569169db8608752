"""The values a site's data fields may hold: one rule per kind of field, used wherever one is read.

A CSV cell is always text; a JSON Lines value may be any JSON type, so each rule says which JSON
types it takes and turns the value into what fedxrec keeps (ids, titles and years as text,
categories as a tuple of texts, times and ratings as floats). A value that fits no rule raises
``FieldError`` whose message says what the value should be; the file readers (shared/data.py) add
the file, the line and the field, the scorer's HTTP API (clients/scorer/http_api.py) the request
field.

- id (item_id, user_id): a string, or an integer in JSON (``5`` and ``5.0`` are the id "5");
  never a bool, a number with a fraction, null, a list or an object;
- required text (title): a non-empty string; optional text (description): a string or null;
- categories: a list of strings, or one string "a|b"; null or missing for none;
- year: a whole number, or a string (kept as text), or null;
- number (timestamp, rating): a finite number, or a string of one; never a bool.
"""

from __future__ import annotations

import json
import math
from typing import Any


class FieldError(ValueError):
    """A field's value has the wrong type or form; the message says what it should be."""


def shown(value: Any) -> str:
    """A value as the user wrote it: quoted text, or the JSON of anything else."""
    if isinstance(value, str):
        return repr(value)
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _whole_number(value: Any) -> int | None:
    """An int, or a float without a fraction, as an int; None for anything else (bool included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _text_or_whole_number(value: Any, refusal: str) -> str:
    """A string (stripped), or a whole number as text; ``FieldError(refusal)`` for the rest."""
    if isinstance(value, str):
        return value.strip()
    whole = _whole_number(value)
    if whole is None:
        raise FieldError(refusal)
    return str(whole)


def identifier(value: Any) -> str:
    """An item or user id, as text (empty when the value is an empty or blank string)."""
    return _text_or_whole_number(
        value, 'is not an id: use a string (or a whole number), e.g. "m42" or 42'
    )


def required_text(value: Any) -> str:
    """Text that must be there (empty when the value is an empty or blank string)."""
    if not isinstance(value, str):
        raise FieldError('is not a string: give it as text, e.g. "Heat"')
    return value.strip()


def optional_text(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise FieldError("is not a string: give it as text, or leave it out")
    return value.strip()


def categories(value: Any) -> tuple[str, ...]:
    """Category names: a list of strings, or "a|b"; blank names are dropped."""
    if value is None:
        return ()
    if isinstance(value, str):
        if value.strip().startswith("[") and value.strip().endswith("]"):
            raise FieldError("looks like a list written as text: in a CSV file write a|b")
        parts: list[Any] = value.split("|")
    elif isinstance(value, list):
        parts = value
        if not all(isinstance(part, str) for part in parts):
            raise FieldError('holds a non-string: give a list of names, e.g. ["Action", "Drama"]')
    else:
        raise FieldError('is not a list of names: give e.g. ["Action", "Drama"] or "Action|Drama"')
    return tuple(part.strip() for part in parts if part.strip())


def year(value: Any) -> str:
    """A year as text ("" when there is none). Any string is kept as it is: it is only ever read
    as part of the item's text, and real catalogues hold "1995-1996", "c. 1500" (and MovieLens-100K
    "unkonwn" and "V")."""
    if value is None:
        return ""
    return _text_or_whole_number(
        value, "is not a year: give a whole number, e.g. 1995, a text, or leave it out"
    )


def number(value: Any) -> float:
    """A finite number; a string is read as one (CSV cells are text)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise FieldError("is not a number")
    try:
        result = float(value)
    except ValueError:
        raise FieldError("is not a number") from None
    if not math.isfinite(result):
        raise FieldError("is not a finite number")
    return result


def optional_number(value: Any) -> float | None:
    """A number, or None when the value is empty or null."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return number(value)
