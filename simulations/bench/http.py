"""HTTP latency of `fedxrec serve`, for the scorer benchmark (simulations/bench/scorer.py): a real
server process on loopback, 10-item histories, p50/p99 and throughput at 1, 8 and 32 concurrent
clients, for the hybrid ranking and the text-only one, one after the other."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from shared.data import Interaction, read_items

HISTORY_LENGTH = 10
CONCURRENCY = (1, 8, 32)


def recent_histories(interactions: list[Interaction], length: int, limit: int) -> list[list[str]]:
    by_user: dict[str, list[tuple[float, str]]] = {}
    for it in interactions:
        by_user.setdefault(it.user_id, []).append((it.timestamp, it.item_id))
    out = []
    for user in sorted(by_user):
        events = sorted(by_user[user])
        if len(events) >= length:
            out.append([item for _, item in events[-length:]])
    return out[:limit]


def start_server(command: list[str], env: dict[str, str], timeout_s: float) -> tuple[Any, str]:
    """Start `fedxrec serve`; return (process, base URL) once it listens."""
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout_s
    log: list[str] = []
    for line in proc.stderr:
        log.append(line)
        found = re.search(r"listening on (http://\S+)", line)
        if found:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, found.group(1)
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError("fedxrec serve did not start:\n" + "".join(log[-20:]))


async def load_test(
    url: str, histories: list[list[str]], clients: int, seconds: float
) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        await asyncio.gather(
            *(client.post("/rank", json={"history": h, "k": 10}) for h in histories[:clients])
        )
        latencies: list[float] = []
        errors = 0
        end = time.perf_counter() + seconds

        async def worker(first: int) -> None:
            nonlocal errors
            n = first
            while time.perf_counter() < end:
                body = {"history": histories[n % len(histories)], "k": 10}
                start = time.perf_counter()
                reply = await client.post("/rank", json=body)
                if reply.status_code == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors += 1
                n += clients

        began = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(clients)))
        elapsed = time.perf_counter() - began
        model = (await client.get("/model")).json()
    latencies.sort()
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "requests_per_s": len(latencies) / elapsed,
        "largest_batch": model.get("largest_batch"),
    }


def bench_http(
    args: argparse.Namespace,
    adapter: Path,
    items_file: Path,
    histories: list[list[str]],
    work: Path,
) -> dict[str, Any]:
    modes = {
        mode: bench_http_mode(args, adapter, items_file, histories, work, extra)
        for mode, extra in (("hybrid", []), ("text-only", ["--text-only"]))
    }
    return {
        "items": len(read_items(items_file)),
        "history_length": HISTORY_LENGTH,
        "modes": modes,
    }


def bench_http_mode(
    args: argparse.Namespace,
    adapter: Path,
    items_file: Path,
    histories: list[list[str]],
    work: Path,
    extra: list[str],
) -> list[dict[str, Any]]:
    command = [
        sys.executable, "-m", "clients.scorer.cli", "serve",
        "--adapter", str(adapter), "--items", str(items_file), "--port", "0",
        "--device", args.device, "--precision", args.precision,
        "--cache-dir", str(work / "cache"),
    ]  # fmt: skip
    if args.encoder:
        command += ["--encoder", args.encoder]
    if args.threads:
        command += ["--threads", str(args.threads)]
    command += extra
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), *sys.path]))}
    proc, url = start_server(command, env, timeout_s=900)
    try:
        seconds = 2.0 if args.quick else 8.0
        levels = [asyncio.run(load_test(url, histories, c, seconds)) for c in CONCURRENCY]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return levels
