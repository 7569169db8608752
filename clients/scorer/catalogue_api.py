"""The service's catalogue endpoints: ``PUT /items/{item_id}`` adds or updates one item,
``DELETE /items/{item_id}`` removes one, both under the admin token.

An item is checked by the items file's own rules (shared/data.py: ``item_from_row``) and a bad
one answered with a 422 naming the field; a change is journaled beside the items file before
it is served (clients/scorer/catalogue_changes.py) and ranked from the next request on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from clients.scorer.service import ScorerService
from shared.data import DataError, item_from_row

ITEM_FIELDS = ("item_id", "title", "year", "categories", "description")


def add_catalogue_routes(
    app: FastAPI,
    service: ScorerService,
    admin: Callable[[Request], JSONResponse | None],
    error: type[JSONResponse],
) -> None:
    """``error``: the response class of a 4xx that may quote the request's own text."""

    @app.put("/items/{item_id}")
    async def put_item(item_id: str, request: Request) -> JSONResponse:
        refused = admin(request)
        if refused:
            return refused
        try:
            body = await request.json()
        except ValueError:
            return error({"detail": "the body is not JSON: send the item as a JSON object"}, 422)
        problem = _item_problem(item_id, body)
        if problem:
            return error({"detail": problem}, 422)
        try:
            item = item_from_row({**body, "item_id": item_id}, f"item '{item_id}'")
            (item.title + item.description + "".join(item.categories)).encode("utf-8")
        except DataError as err:
            return error({"detail": str(err)}, 422)
        except UnicodeEncodeError:
            return error(
                {"detail": "the item holds text UTF-8 cannot hold (a lone surrogate)"}, 422
            )
        started = time.perf_counter()
        fresh, done = await asyncio.to_thread(service.put_item, item)
        return JSONResponse(_answer(done, item_id, fresh, started))

    @app.delete("/items/{item_id}")
    async def delete_item(item_id: str, request: Request) -> JSONResponse:
        refused = admin(request)
        if refused:
            return refused
        started = time.perf_counter()
        try:
            fresh = await asyncio.to_thread(service.remove_item, item_id)
        except KeyError:
            return error({"detail": f"item '{item_id}' is not in the catalogue"}, 404)
        return JSONResponse(_answer("removed", item_id, fresh, started))


def _item_problem(item_id: str, body: Any) -> str | None:
    if not isinstance(body, dict):
        return f"the body is a JSON {type(body).__name__}: send the item as a JSON object"
    unknown = sorted(set(body) - set(ITEM_FIELDS))
    if unknown:
        return f"unknown field(s) {', '.join(unknown)}: an item has {', '.join(ITEM_FIELDS)}"
    if "item_id" in body and str(body["item_id"]) != item_id:
        return f"the body's item_id {body['item_id']!r} is not the path's {item_id!r}"
    return None


def _answer(done: str, item_id: str, fresh: Any, started: float) -> dict[str, Any]:
    return {
        "status": done,
        "item_id": item_id,
        "items": len(fresh.index),
        "catalogue_hash": fresh.index.catalogue_hash,
        "seconds": round(time.perf_counter() - started, 4),
    }
