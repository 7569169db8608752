"""The site's scoring service: FastAPI over the local scorer, with request batching and hot reload.

Endpoints:
- ``POST /rank`` ``{"history": [item ids, oldest first] | "free text", "k": 10, "exclude_seen": true}``
  → ranked items with scores and explanations (see clients/ranking.py);
- ``GET /health``; ``GET /model`` (adapter hash, round, encoder, catalogue);
- ``POST /reload`` (``?wait=true`` to block until done): load the adapter folder and items file
  again, in the background. ``--watch`` does the same when their files change.

Guarantees:
- Never a half-loaded model: the server listens only after the first model and index are built; a
  reload builds a complete new snapshot (model + index) aside and swaps it in with one reference
  assignment. Each request takes the snapshot once, is validated against it and is answered from
  it alone, so no answer mixes two adapters. A failed reload keeps the old snapshot and is
  reported in /health and /model.
- Concurrent requests are batched: one worker thread owns the device and takes every request
  queued while it was busy as one batch (one encoder call, one matrix product).
- Nothing reaches the model unchecked: body size, JSON shape, empty history, unknown item ids and
  k are checked first and answered with a 4xx whose message names the problem.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from clients.item_index import UnknownItemError
from clients.ranking import Query, Recommendation, query_for_ids, recommend
from clients.scorer_model import SiteScorer
from shared.adapter import CONFIG_FILE, HEAD_FILE, META_FILE, WEIGHTS_FILE

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_HISTORY_IDS = 1000
MAX_TEXT_CHARS = 10_000
MAX_K = 1000
DEFAULT_MAX_BATCH = 64


class RankBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    history: list[str | int] | str
    k: int = 10
    exclude_seen: bool = True


class BadRequest(ValueError):
    """A request that must not reach the model; the message says what to fix."""


def check_rank_body(body: RankBody, snapshot: SiteScorer) -> Query:
    """Turn a request into a query against ``snapshot``'s catalogue, or say what is wrong."""
    if not 1 <= body.k <= MAX_K:
        raise BadRequest(
            f"k={body.k} is out of range: ask for 1 to {MAX_K} items (fewer come back when the "
            f"catalogue, {len(snapshot.index)} items here, has fewer left)"
        )
    if isinstance(body.history, str):
        if not body.history.strip():
            raise BadRequest("history is empty: send the user's item ids (oldest first) or a text")
        if len(body.history) > MAX_TEXT_CHARS:
            raise BadRequest(
                f"history text has {len(body.history)} characters; send at most {MAX_TEXT_CHARS} "
                "(only the first tokens shape the user vector)"
            )
        return Query(text=body.history, k=body.k, exclude_seen=body.exclude_seen)
    if not body.history:
        raise BadRequest("history is empty: send the user's item ids (oldest first) or a text")
    if len(body.history) > MAX_HISTORY_IDS:
        raise BadRequest(
            f"history has {len(body.history)} item ids; send at most {MAX_HISTORY_IDS} (only the "
            "most recent shape the user vector)"
        )
    ids = [str(i).strip() for i in body.history]
    if not all(ids):
        raise BadRequest("history holds an empty item id; send the ids of the items file")
    try:
        return query_for_ids(snapshot.index, ids, k=body.k, exclude_seen=body.exclude_seen)
    except UnknownItemError as err:
        raise BadRequest(str(err)) from None


# ---- the model's owner: snapshots, reloads, watching ---------------------------------------------


class ScorerService:
    """Holds the current snapshot and replaces it, whole, when the adapter or catalogue changes."""

    def __init__(
        self,
        load: Callable[[], SiteScorer],
        current: SiteScorer,
        *,
        watch_paths: Sequence[Path] = (),
        watch_interval_s: float = 0.0,
    ) -> None:
        self._load = load
        self._current = current
        self.generation = 1
        self.last_reload_error: str | None = None
        self.reloads = 0
        self._reload_lock = threading.Lock()  # one load at a time
        self._state_lock = threading.Lock()  # guards the background thread and its pending flag
        self._reload_thread: threading.Thread | None = None
        self._reload_pending = False
        self._watch_paths = list(watch_paths)
        self._watch_interval_s = watch_interval_s
        self._stop = threading.Event()
        self._watch_thread: threading.Thread | None = None

    @property
    def current(self) -> SiteScorer:
        return self._current

    @property
    def reloading(self) -> bool:
        return self._reload_lock.locked()

    def reload_now(self) -> SiteScorer:
        """Build a new snapshot and swap it in (blocking); on error the old one stays."""
        with self._reload_lock:
            started = time.perf_counter()
            try:
                fresh = self._load()
            except Exception as err:
                self.last_reload_error = f"{type(err).__name__}: {err}"
                log.warning("reload failed, still serving the previous model: %s", err)
                raise
            self._current = fresh  # the swap: one reference assignment, atomic for readers
            self.generation += 1
            self.reloads += 1
            self.last_reload_error = None
            log.info(
                "serving adapter %s (%d items, %d encoded) after a %.1fs reload",
                fresh.model.adapter_hash,
                len(fresh.index),
                fresh.index.encoded,
                time.perf_counter() - started,
            )
            return fresh

    def request_reload(self) -> str:
        """Reload in a background thread; "started", or "queued" behind the one in progress."""
        with self._state_lock:
            if self._reload_thread is not None:
                self._reload_pending = True  # files may have changed after that load began
                return "queued"
            self._reload_thread = threading.Thread(
                target=self._reload_loop, name="fedxrec-reload", daemon=True
            )
            self._reload_thread.start()
            return "started"

    def _reload_loop(self) -> None:
        while True:
            with self._state_lock:
                self._reload_pending = False
            with contextlib.suppress(Exception):  # reported through last_reload_error
                self.reload_now()
            with self._state_lock:
                if not self._reload_pending:
                    self._reload_thread = None
                    return

    def start_watching(self) -> None:
        if not self._watch_paths or self._watch_interval_s <= 0 or self._watch_thread:
            return
        self._watch_thread = threading.Thread(
            target=self._watch_loop, name="fedxrec-watch", daemon=True
        )
        self._watch_thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch_thread is not None:
            self._watch_thread.join(timeout=5)
        with self._state_lock:
            thread = self._reload_thread
        if thread is not None:
            thread.join(timeout=60)

    def _watch_loop(self) -> None:
        seen = files_signature(self._watch_paths)
        while not self._stop.wait(self._watch_interval_s):
            now = files_signature(self._watch_paths)
            if now != seen:
                seen = now
                log.info("adapter or catalogue changed on disk: reloading")
                self.request_reload()

    def describe(self) -> dict[str, Any]:
        return {
            **self.current.describe(),
            "generation": self.generation,
            "reloading": self.reloading,
            "reloads": self.reloads,
            "last_reload_error": self.last_reload_error,
        }


def files_signature(paths: Sequence[Path]) -> tuple[tuple[int, int, int] | None, ...]:
    """What changes when a file is rewritten or replaced (also a whole folder swapped in)."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def watched_files(
    adapter_dir: Path, items_file: Path, interactions_file: Path | None = None
) -> list[Path]:
    return [
        adapter_dir / CONFIG_FILE,
        adapter_dir / WEIGHTS_FILE,
        adapter_dir / HEAD_FILE,
        adapter_dir / META_FILE,
        items_file,
        *([interactions_file] if interactions_file else []),
    ]


# ---- batching ------------------------------------------------------------------------------------


@dataclass
class _Pending:
    snapshot: SiteScorer
    query: Query
    future: asyncio.Future[list[Recommendation]]


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    largest: int = 0


class RankBatcher:
    """One worker thread owns the device; requests queued while it works form the next batch."""

    def __init__(self, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch}: must be >= 1")
        self.max_batch = max_batch
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedxrec-rank")
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def rank(self, snapshot: SiteScorer, query: Query) -> list[Recommendation]:
        if self._queue is None:
            raise RuntimeError("the batcher is not running")
        future: asyncio.Future[list[Recommendation]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(snapshot, query, future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            live = [p for p in batch if not p.future.done()]  # clients that hung up are skipped
            if not live:
                continue
            self.stats.batches += 1
            self.stats.requests += len(live)
            self.stats.largest = max(self.stats.largest, len(live))
            try:
                results = await loop.run_in_executor(self._executor, _rank_batch, live)
            except Exception as err:  # a bug, not bad input: every waiter gets the error
                log.exception("ranking a batch failed")
                results = [err] * len(live)
            for pending, result in zip(live, results, strict=True):
                if pending.future.done():
                    continue
                if isinstance(result, BaseException):
                    pending.future.set_exception(result)
                else:
                    pending.future.set_result(result)


def _rank_batch(batch: list[_Pending]) -> list[list[Recommendation] | BaseException]:
    """Rank a batch, one device call per snapshot (a reload may land between two requests)."""
    results: list[list[Recommendation] | BaseException] = [[] for _ in batch]
    groups: dict[int, list[int]] = {}
    for position, pending in enumerate(batch):
        groups.setdefault(id(pending.snapshot), []).append(position)
    for positions in groups.values():
        snapshot = batch[positions[0]].snapshot
        try:
            ranked = recommend(
                snapshot.model.rec,
                snapshot.index,
                [batch[p].query for p in positions],
                local=snapshot.local,
            )
        except Exception as err:
            log.exception("ranking failed")
            for p in positions:
                results[p] = err
            continue
        for p, recs in zip(positions, ranked, strict=True):
            results[p] = recs
    return results


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
) -> FastAPI:
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

    app = FastAPI(title="fedxrec site scorer", lifespan=lifespan)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.state.service = service
    app.state.batcher = batcher

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(err)}, status_code=422)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, err: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=422)

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
                "status": "ok",
                "adapter_hash": snapshot.model.adapter_hash,
                "items": len(snapshot.index),
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

    @app.post("/reload")
    async def reload(wait: bool = False) -> JSONResponse:
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
        return JSONResponse({"status": "reloaded", **fresh.describe()})

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
