"""The model's owner in the scoring service: the current snapshot, reloads and watching files.

A snapshot (``SiteScorer``: model + item index + the site's own signals) is never changed: a
reload builds a complete new one aside and swaps it in with one reference assignment, so a request
that took the old one is answered from it alone. A failed reload keeps the old snapshot and is
reported. ``--watch`` reloads when the adapter folder, the items file or the interactions file
changes on disk. Item additions, updates and removals (clients/scorer/catalogue_changes.py) make
new snapshots the same way, one change at a time and never during a reload.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from clients.scorer.catalogue_changes import DELETE, PUT, append_change
from clients.scorer.live_catalogue import with_item, without_item
from clients.scorer.model import SiteScorer
from shared.adapter import CONFIG_FILE, HEAD_FILE, META_FILE, WEIGHTS_FILE
from shared.text import Item

log = logging.getLogger(__name__)


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

    def put_item(self, item: Item) -> tuple[SiteScorer, str]:
        """Add or update one item while serving: encoded alone, journaled, then swapped in;
        "added" or "updated"."""
        with self._reload_lock:  # after any reload in progress, which replays the journal
            fresh, done = with_item(self._current, item)
            append_change(fresh.items_file, PUT, item.item_id, item)  # durable before served
            self._swap(fresh)
            return fresh, done

    def remove_item(self, item_id: str) -> SiteScorer:
        """Retire one item while serving; KeyError when the catalogue does not hold it."""
        with self._reload_lock:
            fresh = without_item(self._current, item_id)
            append_change(fresh.items_file, DELETE, item_id)
            self._swap(fresh)
            return fresh

    def _swap(self, fresh: SiteScorer) -> None:
        self._current = fresh  # one reference assignment, atomic for readers
        self.generation += 1

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
