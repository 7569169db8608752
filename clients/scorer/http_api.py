"""The site's scoring service: FastAPI over the local scorer, with request batching and hot reload.

Endpoints:
- ``POST /rank`` ``{"history": [item ids, oldest first] | "free text", "k": 10, "exclude_seen": true}``
  → ranked items with scores and explanations (see clients/scorer/ranking.py);
- ``GET /health`` (the live model and the probe it passed); ``GET /model`` (adapter hash, round,
  encoder, catalogue, fusion weights);
- admin, only with the admin token (``Authorization: Bearer TOKEN``; no token configured = off):
  ``PUT``/``DELETE /items/{id}`` change the catalogue while it serves
  (clients/scorer/catalogue_api.py); ``POST /reload`` (``?wait=true`` to block until done) loads the adapter folder, items and
  interactions again in the background, one reload at a time (another gets 409); ``GET
  /openapi.json``. ``--watch`` reloads when their files change.

Guarantees:
- Never a half-loaded model: the server listens only after the first model and index are built; a
  reload builds a complete new snapshot (model + index) aside and swaps it in with one reference
  assignment. Each request takes the snapshot once, is validated against it and is answered from
  it alone, so no answer mixes two adapters. A failed reload keeps the old snapshot and is
  reported in /health and /model.
- Concurrent requests are batched (clients/scorer/batcher.py): one worker thread owns the device
  and takes every request queued while it was busy as one batch.
- Nothing reaches the model unchecked: content type, body size, JSON shape and types (``k`` an
  integer, not "5" or true; an item id a string or a whole number, by the rule the site's data
  files follow), text UTF-8 cannot hold and k are checked first and answered with a 4xx whose
  message names the problem. Ids the catalogue does not hold are left out and named in the
  reply's ``unknown_items``; a user with nothing known (an empty history, only unknown ids) is a
  new user, ranked by the site's prior (``new_user``: the model's prior and the site's
  popularity, mixed as fitted on validation). A new adapter must pass a probe batch (finite,
  sane scores) before it is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt

from clients.scorer.batcher import DEFAULT_MAX_BATCH, RankBatcher
from clients.scorer.catalogue_api import add_catalogue_routes
from clients.scorer.model import SiteScorer
from clients.scorer.ranking import Query, query_for_ids
from clients.scorer.service import ScorerService
from shared import fields
from shared.fields import FieldError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_HISTORY_IDS = 1000
MAX_TEXT_CHARS = 10_000
MAX_K = 1000


class RankBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Item ids are checked by the data files' own rule (shared/fields.py) in check_rank_body:
    # pydantic would turn true into 1 and 1.0 into 1 before anything could refuse them.
    history: list[Any] | str
    k: StrictInt = 10
    exclude_seen: StrictBool = True


class AsciiJSONResponse(JSONResponse):
    """An error that may quote the request's own text: escaped to ASCII, so that a character
    UTF-8 cannot hold (a lone surrogate) is shown as \\uXXXX instead of failing the reply."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class BadRequest(ValueError):
    """A request that must not reach the model; the message says what to fix."""


def _check_unicode(history: str | list[Any]) -> None:
    """JSON may carry lone surrogates ("\\udfff"), which no tokenizer or UTF-8 reply can hold."""
    texts = [history] if isinstance(history, str) else history
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            where = "history" if isinstance(history, str) else f"history[{position}]"
            raise BadRequest(
                f"{where} holds a character that is not valid Unicode (a lone surrogate, "
                f"U+{ord(text[err.start]):04X} at character {err.start}); send UTF-8 text"
            ) from None


def check_rank_body(body: RankBody, snapshot: SiteScorer) -> Query:
    """Turn a request into a query against ``snapshot``'s catalogue, or say what is wrong."""
    if not 1 <= body.k <= MAX_K:
        raise BadRequest(
            f"k={body.k} is out of range: ask for 1 to {MAX_K} items (fewer come back when the "
            f"catalogue, {len(snapshot.index)} items here, has fewer left)"
        )
    _check_unicode(body.history)
    if isinstance(body.history, str):  # an empty text: a new user, ranked by the site's prior
        if len(body.history) > MAX_TEXT_CHARS:
            raise BadRequest(
                f"history text has {len(body.history)} characters; send at most {MAX_TEXT_CHARS} "
                "(only the first tokens shape the user vector)"
            )
        return Query(text=body.history, k=body.k, exclude_seen=body.exclude_seen)
    if len(body.history) > MAX_HISTORY_IDS:
        raise BadRequest(
            f"history has {len(body.history)} item ids; send at most {MAX_HISTORY_IDS} (only the "
            "most recent shape the user vector)"
        )
    ids = []
    for position, value in enumerate(body.history):
        try:
            ids.append(fields.identifier(value))
        except FieldError as err:
            raise BadRequest(f"history[{position}] {fields.shown(value)} {err}") from None
    if not all(ids):
        raise BadRequest("history holds an empty item id; send the ids of the items file")
    return query_for_ids(snapshot.index, ids, k=body.k, exclude_seen=body.exclude_seen)


# ---- HTTP ----------------------------------------------------------------------------------------


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with 413 before anything parses them."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send, int(declared))
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(scope, send, size)
                return
            if not message.get("more_body"):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: dict[str, Any], send: Any, size: int) -> None:
        response = JSONResponse(
            {
                "detail": f"request body too large ({size} bytes or more; the limit is "
                f"{self.max_bytes}): send at most {MAX_HISTORY_IDS} history item ids or "
                f"{MAX_TEXT_CHARS} characters of text"
            },
            status_code=413,
            headers={"Connection": "close"},
        )
        await response(scope, _no_body, send)


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def _validation_message(err: RequestValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) + (
        ' (expected JSON like {"history": ["item id", ...] or "text", "k": 10, '
        '"exclude_seen": true})'
    )


def create_app(
    service: ScorerService,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_body_bytes: int = MAX_BODY_BYTES,
    admin_token: str | None = None,
) -> FastAPI:
    """The app; ``admin_token`` unlocks /reload and /openapi.json (None: they are off)."""
    batcher = RankBatcher(max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        service.start_watching()
        try:
            yield
        finally:
            service.stop()
            await batcher.stop()

    app = FastAPI(
        title="fedxrec site scorer",
        lifespan=lifespan,
        docs_url=None,  # no unauthenticated pages: the schema is an admin endpoint below
        redoc_url=None,
        openapi_url=None,
    )
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)

    def admin(request: Request) -> JSONResponse | None:
        """None if the request carries the admin token, else the refusal to send."""
        if admin_token is None:
            return JSONResponse(
                {
                    "detail": "admin endpoints are off: start fedxrec serve with "
                    "--admin-token-file FILE (or FEDXREC_ADMIN_TOKEN) and send "
                    "'Authorization: Bearer TOKEN'"
                },
                status_code=403,
            )
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {admin_token}".encode()):
            return JSONResponse(
                {"detail": "admin endpoint: send 'Authorization: Bearer TOKEN' with the token"},
                status_code=401,
            )
        return None

    app.state.service = service
    app.state.batcher = batcher

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        return AsciiJSONResponse({"detail": _validation_message(err)}, status_code=422)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, err: BadRequest) -> JSONResponse:
        return AsciiJSONResponse({"detail": str(err)}, status_code=422)

    @app.middleware("http")
    async def json_only(request: Request, call_next: Any) -> Any:
        if request.method == "POST" and request.url.path == "/rank":
            kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                return JSONResponse(
                    {
                        "detail": f"content-type '{kind or 'none'}' is not JSON: send the body "
                        "as JSON with 'Content-Type: application/json'"
                    },
                    status_code=415,
                )
        return await call_next(request)

    @app.post("/rank")
    async def rank(body: RankBody) -> JSONResponse:
        snapshot = service.current  # taken once: validation and answer use the same model
        query = check_rank_body(body, snapshot)
        recommendations = await batcher.rank(snapshot, query)
        model = snapshot.model
        return JSONResponse(
            {
                "adapter_hash": model.adapter_hash,
                "round": model.adapter_round,
                "catalogue_hash": snapshot.index.catalogue_hash,
                "new_user": query.new_user,  # nothing known: the site's prior ranked
                "unknown_items": list(query.unknown_ids),  # not in the catalogue: left out
                "items": [
                    {"rank": position, **r.to_dict()}
                    for position, r in enumerate(recommendations, start=1)
                ],
            }
        )

    @app.get("/health")
    async def health() -> JSONResponse:
        snapshot = service.current
        return JSONResponse(
            {
                "status": "ok",  # the live model passed its probe when it was loaded
                "adapter_hash": snapshot.model.adapter_hash,
                "model_check": snapshot.model_check,
                "items": len(snapshot.index),
                "ranking": "hybrid" if snapshot.local else "text-only",
                "reloading": service.reloading,
                "last_reload_error": service.last_reload_error,
            }
        )

    @app.get("/model")
    async def model() -> JSONResponse:
        stats = batcher.stats
        return JSONResponse(
            {**service.describe(), "batches": stats.batches, "largest_batch": stats.largest}
        )

    @app.get("/openapi.json")
    async def schema(request: Request) -> JSONResponse:
        refused = admin(request)
        return refused or JSONResponse(app.openapi())

    @app.post("/reload")
    async def reload(request: Request, wait: bool = False) -> JSONResponse:
        refused = admin(request)
        if refused:
            return refused
        if service.reloading:
            return JSONResponse(
                {"detail": "a reload is already running: try again when it has finished"},
                status_code=409,
            )
        if not wait:
            return JSONResponse({"status": service.request_reload()}, status_code=202)
        try:
            fresh = await asyncio.to_thread(service.reload_now)
        except (ValueError, OSError, RuntimeError) as err:
            return JSONResponse(
                {
                    "detail": f"reload failed: {err}; still serving adapter "
                    f"{service.current.model.adapter_hash}"
                },
                status_code=409,
            )
        except Exception as err:  # a fault of ours, not of the files: said, never a traceback
            return JSONResponse(
                {
                    "detail": f"reload failed ({type(err).__name__}: {err}); still serving "
                    f"adapter {service.current.model.adapter_hash}"
                },
                status_code=500,
            )
        return JSONResponse({"status": "reloaded", **fresh.describe()})

    add_catalogue_routes(app, service, admin, AsciiJSONResponse)
    return app


def build_server(app: FastAPI, *, log_level: str = "warning") -> Any:
    import uvicorn

    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(config)


def bind(host: str, port: int) -> socket.socket:
    """A bound socket (port 0 picks a free one: read it back with getsockname). The server starts
    listening on it only when it serves, so no connection is accepted before the model is ready."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise OSError(
            f"cannot listen on {host}:{port} ({err.strerror}); pick another --port or stop what "
            "uses it"
        ) from None
    return sock
