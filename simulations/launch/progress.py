"""Waiting on Flower processes by their progress, not by a fixed guess.

A wait fails only when nothing it depends on has progressed for ``Patience.stall`` seconds, or
when it has lasted ``Patience.cap`` seconds in all, so a slow machine that is still getting
somewhere is waited for, and a hung process is found within the stall window. Progress is any of:
- a new line in a watched process's log (except the lines our own polling makes the SuperLink log);
- a file written in a watched folder (a round's metrics, adapter, checkpoint);
- a new process below a watched one (Flower starts a process for every message);
- a Flower app process (ServerApp, ClientApp, simulation, a ``flwr`` CLI call) using the CPU.

The error says what was awaited, since when, what moved last, and for every process involved its
name, PID and state and the last lines of its log.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

# Lines the SuperLink logs for our own `flwr ls` / `flwr supernode ls` polling: not progress.
POLLING = re.compile(r"ListRuns|list-runs|ListNodes|list-nodes")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The processes that do a federation's work; the SuperLink, SuperNodes and SuperExecs only poll.
APP_PROCESSES = (b"flwr-serverapp", b"flwr-clientapp", b"flwr-simulation", b"ray::")
CPU_WINDOW = 5.0  # seconds between CPU samples
BUSY_SHARE = 0.05  # the share of a core a process uses between two samples to count as computing
TICKS = os.sysconf("SC_CLK_TCK")


class FlowerRunError(RuntimeError):
    """The Flower run did not finish successfully."""


class WaitError(FlowerRunError):
    """A wait on Flower processes gave up: nothing progressed, or it lasted too long."""


@dataclass(frozen=True)
class Patience:
    """How long a wait goes on: ``stall`` seconds without any progress, ``cap`` in all (None:
    no cap)."""

    stall: float = 180.0
    cap: float | None = 1800.0


@dataclass
class Watched:
    """One process a wait depends on. ``busy``: its own CPU use counts as progress (a CLI call, a
    SuperLink starting up); otherwise only the app processes below it count."""

    name: str
    pid: int | None
    log_path: Path | None = None
    busy: bool = False


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state first), or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float | None:
    fields = _stat(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / TICKS


def state(pid: int | None) -> str:
    fields = None if pid is None else _stat(pid)
    if fields is None or fields[0] in "ZX":
        return "not running"
    return "running"


def process_tree() -> dict[int, list[int]]:
    """Parent PID -> child PIDs, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(root: int, tree: dict[int, list[int]] | None = None) -> set[int]:
    """Every process below ``root``, whatever session or process group it started."""
    tree = process_tree() if tree is None else tree
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip()
    except OSError:
        return b""


def last_lines(path: Path | None, count: int = 6) -> list[str]:
    """The log's last ``count`` non-empty lines other than our polling's, colour codes removed."""
    if path is None or not path.exists():
        return []
    with path.open("rb") as fh:
        fh.seek(max(0, fh.seek(0, os.SEEK_END) - 64_000))
        text = fh.read().decode(errors="replace")
    lines = [ANSI.sub("", line).rstrip() for line in text.splitlines()]
    return [line for line in lines if line.strip() and not POLLING.search(line)][-count:]


class Progress:
    """Tells when the watched processes, their logs and folders last got anywhere."""

    def __init__(
        self,
        watched: Iterable[Watched],
        folders: Iterable[Path] = (),
        counter: Callable[[], int] | None = None,
        counter_name: str = "output",
    ) -> None:
        self.watched = list(watched)
        self.folders = [Path(f) for f in folders]
        self.counter, self.counter_name = counter, counter_name
        self.last = time.monotonic()  # when something last moved
        self.last_move = "nothing yet (the wait started)"
        self._offsets: dict[Path, int] = {}
        self._log_moved: dict[Path, float] = {}
        self._count = counter() if counter else 0
        self._files = self._folder_state()
        self._pids: set[int] = set()
        self._cpu: dict[int, float] = {}
        self._sampled = 0.0
        self._sample(time.monotonic())  # what exists now is the baseline, not progress
        for w in self.watched:
            if w.log_path is not None:
                self._new_lines(w.log_path)

    def _moved(self, now: float, what: str) -> None:
        self.last, self.last_move = now, what

    def _new_lines(self, path: Path) -> int:
        """Lines appended to ``path`` since the last look, our polling's excluded."""
        try:
            with path.open("rb") as fh:
                fh.seek(self._offsets.get(path, 0))
                data = fh.read()
        except OSError:
            return 0
        end = data.rfind(b"\n") + 1  # a partial last line waits for its end
        self._offsets[path] = self._offsets.get(path, 0) + end
        lines = data[:end].decode(errors="replace").splitlines()
        return sum(1 for line in lines if line.strip() and not POLLING.search(line))

    def _folder_state(self) -> tuple[int, int]:
        count, newest = 0, 0
        for folder in self.folders:
            if folder.is_dir():
                for path in folder.rglob("*"):
                    try:
                        newest = max(newest, path.stat().st_mtime_ns)
                    except OSError:
                        continue
                    count += 1
        return count, newest

    def _sample(self, now: float) -> str | None:
        """New processes below the watched ones, or one of them computing, since the last
        sample; what moved, or None."""
        tree = process_tree()
        pids: set[int] = set()
        busy: set[int] = set()
        for w in self.watched:
            if w.pid is None:
                continue
            pids.add(w.pid)
            below = descendants(w.pid, tree)
            pids |= below
            if w.busy:
                busy.add(w.pid)
            busy |= {p for p in below if any(a in _cmdline(p) for a in APP_PROCESSES)}
        moved, busy_cpu = None, BUSY_SHARE * (now - self._sampled)
        if new := pids - self._pids:
            moved = f"a new process: {_cmdline(min(new)).decode(errors='replace')[:80]}"
        for pid in busy:
            cpu = cpu_seconds(pid)
            if cpu is None:
                continue
            if cpu - self._cpu.get(pid, cpu) >= busy_cpu and moved is None:
                moved = f"PID {pid} computing ({_cmdline(pid).decode(errors='replace')[:60]})"
            self._cpu[pid] = cpu
        self._pids, self._sampled = pids, now
        return moved

    def poll(self) -> None:
        now = time.monotonic()
        for w in self.watched:
            if w.log_path is not None and self._new_lines(w.log_path):
                self._log_moved[w.log_path] = now
                self._moved(now, f"a new line in {w.name}'s log")
        if self.counter is not None and (count := self.counter()) != self._count:
            self._count = count
            self._moved(now, f"new {self.counter_name}")
        if now >= self._sampled + CPU_WINDOW:
            if (files := self._folder_state()) != self._files:
                self._files = files
                self._moved(now, f"a file written in {', '.join(map(str, self.folders))}")
            if moved := self._sample(now):
                self._moved(now, moved)

    def report(self) -> str:
        """Every watched process: name, PID, state, its log's age and last lines."""
        now = time.monotonic()
        parts = []
        for w in self.watched:
            head = f"  {w.name} (PID {w.pid}, {state(w.pid)}"
            if w.pid is not None and (below := descendants(w.pid)):
                head += f", {len(below)} processes below it"
            if w.log_path is None:
                parts.append(head + ")")
                continue
            moved = self._log_moved.get(w.log_path)
            age = (
                "no new line during the wait"
                if moved is None
                else f"last line {now - moved:.0f} s ago"
            )
            parts.append(f"{head}; {age}; log {w.log_path}):")
            parts += [f"      {line[:200]}" for line in last_lines(w.log_path)] or ["      (empty)"]
        return "\n".join(parts)


def wait_for(
    what: str | Callable[[], str],
    done: Callable[[], T | None],
    progress: Progress,
    patience: Patience,
    poll: float = 0.5,
) -> T:
    """Call ``done`` until it returns something other than None or False; raise ``WaitError``
    when ``progress`` saw nothing move for ``patience.stall`` seconds or after ``patience.cap``."""
    started = time.monotonic()
    while True:
        result = done()
        if result is not None and result is not False:
            return result
        progress.poll()
        now = time.monotonic()
        stalled = now - progress.last > patience.stall
        if stalled or (patience.cap is not None and now - started > patience.cap):
            why = (
                f"nothing progressed for {now - progress.last:.0f} s"
                if stalled
                else f"still not done after the cap of {patience.cap:.0f} s"
            )
            text = what() if callable(what) else what
            raise WaitError(
                f"gave up waiting for {text}: {why} (waited {now - started:.0f} s; last progress "
                f"{now - progress.last:.0f} s ago: {progress.last_move}). The processes:\n"
                + progress.report()
            )
        if poll:
            time.sleep(poll)
