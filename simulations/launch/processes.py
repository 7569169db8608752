"""The processes a local Flower federation starts: their environment, and finding and stopping
every one of them by PID.

The SuperLink's children start sessions of their own (flower-superexec, flwr-simulation, Ray's
workers), so they are found by a tag in their environment and by parentage, not by process group.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path

from simulations.launch.progress import descendants, state

TAG_VARIABLE = "FEDXREC_PROCESS_TAG"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_tmpdir(flwr_home: Path) -> str:
    """A short folder for Ray: its socket paths must stay under 107 bytes (AF_UNIX), which a
    deep ``flwr_home`` (pytest's tmp folders, long run names) would exceed."""
    digest = hashlib.sha256(str(Path(flwr_home).resolve()).encode()).hexdigest()[:10]
    return str(Path(tempfile.gettempdir()) / f"fxray-{digest}")


def flower_env(flwr_home: Path, *, use_gpu: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)  # the SuperLink starts its helpers by name
    env.update(
        FLWR_HOME=str(flwr_home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        HF_HUB_OFFLINE="1",
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
        RAY_TMPDIR=ray_tmpdir(flwr_home),
        # Ray binds its services to loopback, not the machine's address.
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_DISABLE_USAGE_STATS="1",
        RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
    )
    if not use_gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def tagged_processes(tag: str, root: int | None = None) -> set[int]:
    """PIDs carrying ``tag`` in their environment, plus every descendant of ``root``."""
    found: set[int] = set()
    needle = f"{TAG_VARIABLE}={tag}".encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if needle in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                    found.add(int(entry))
            except OSError:
                continue
    if root is not None:
        found |= descendants(root)
    return found


def stop_processes(pids: set[int], grace: float = 8.0) -> set[int]:
    """SIGTERM, wait, SIGKILL; returns PIDs still alive (should be none)."""

    def alive(pid: int) -> bool:
        return state(pid) == "running"

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 3.0)
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.2)
    return {p for p in pids if alive(p)}
