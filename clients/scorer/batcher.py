"""Request batching for the scoring service: one worker thread owns the device and takes every
request queued while it was busy as one batch (one encoder call, one matrix product)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from clients.scorer.model import SiteScorer
from clients.scorer.ranking import Query, Recommendation, recommend

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 64


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
                candidates=snapshot.candidates,
            )
        except Exception:
            # One bad request must not fail the others batched with it: rank them one by one,
            # so only the request that fails alone gets its error.
            if len(positions) > 1:
                log.warning("a batch of %d failed; ranking its requests one by one", len(positions))
            for p in positions:
                results[p] = _rank_one(snapshot, batch[p].query)
            continue
        for p, recs in zip(positions, ranked, strict=True):
            results[p] = recs
    return results


def _rank_one(snapshot: SiteScorer, query: Query) -> list[Recommendation] | BaseException:
    try:
        return recommend(
            snapshot.model.rec,
            snapshot.index,
            [query],
            local=snapshot.local,
            candidates=snapshot.candidates,
        )[0]
    except Exception as err:
        log.exception("ranking failed")
        return err
