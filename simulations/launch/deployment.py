"""SuperNodes on this machine, for a deployment rehearsal (tests, benchmarks) with a LocalSuperLink.

A real site runs the same command on its own machine (README, "Deploy across organisations"):
``flower-supernode`` pointed at the SuperLink, TLS verified against the federation's CA, its own
authentication key, and a node config naming its platform, data and state folders. Here each one
also gets its own runtime port and carries the SuperLink's process tag, so ``LocalSuperLink.stop``
finds it; ``stop``/``kill`` end one site (its SuperExec and ClientApps included) by PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
from contextlib import suppress
from pathlib import Path

from simulations.launch.processes import free_port, stop_processes
from simulations.launch.progress import FlowerRunError, Patience, Watched, descendants, last_lines
from simulations.launch.superlink import CLI, RUN, LocalSuperLink


def node_config(**values: str | int | float | bool) -> str:
    """``--node-config`` text: ``platform='books' data-path='/srv/books' ...``."""
    parts = []
    for key, value in values.items():
        if isinstance(value, bool):
            parts.append(f"{key}={'true' if value else 'false'}")
        elif isinstance(value, int | float):
            parts.append(f"{key}={value}")
        else:
            parts.append(f"{key}='{value}'")
    return " ".join(parts)


class LocalSuperNode:
    """One site's ``flower-supernode``, connected to ``link``."""

    def __init__(
        self,
        link: LocalSuperLink,
        platform: str,
        *,
        data_path: Path,
        state_dir: Path,
        private_key: Path | None = None,
        keep_updates: bool = False,
        log_path: Path | None = None,
    ) -> None:
        self.link, self.platform = link, platform
        self.data_path, self.state_dir = Path(data_path), Path(state_dir)
        self.private_key = private_key
        self.keep_updates = keep_updates
        self.port = free_port()
        self.log_path = log_path or link.home / f"supernode-{platform}.log"
        self.process: subprocess.Popen | None = None
        self.offset = 0

    def command(self) -> list[str]:
        command = ["flower-supernode", "--superlink", self.link.address, "--port", str(self.port)]
        if self.link.ca_file is None:
            command.append("--insecure")
        else:
            command += ["--root-certificates", str(self.link.ca_file)]
        if self.private_key is not None:
            command += ["--auth-supernode-private-key", str(self.private_key)]
        config = node_config(
            platform=self.platform,
            **{"data-path": str(self.data_path), "state-dir": str(self.state_dir)},
            **({"keep-updates": True} if self.keep_updates else {}),
        )
        return [*command, "--node-config", config]

    def start(self) -> LocalSuperNode:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as log:
            self.offset = log.tell()  # where this start's lines begin (a restart appends)
            self.process = subprocess.Popen(
                self.command(),
                env=self.link.env,  # the link's tag: its stop() finds every site process too
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.link.home,
            )
        self.link.nodes.append(self)  # the link's waits watch this site too
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def name(self) -> str:
        return f"SuperNode {self.platform} (PID {self.pid})"

    def watched(self, busy: bool = False) -> Watched:
        return Watched(f"SuperNode {self.platform}", self.pid, self.log_path, busy)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_exit(self, patience: Patience = CLI) -> int:
        """Wait until the SuperNode exits (one that is refused does); returns its exit code."""
        assert self.process is not None
        process = self.process
        return self.link.wait_until(
            f"{self.name} to exit", process.poll, patience=patience, also=[self.watched(busy=True)]
        )

    def wait_for_log(
        self, text: str, *, after: int | None = None, patience: Patience = RUN
    ) -> None:
        """Wait until ``text`` appears in this start's log (past offset ``after``); the wait
        watches the whole federation, since a site's next line waits on the coordinator."""
        start = self.offset if after is None else after

        def logged() -> bool:
            if text in self.log()[start:]:
                return True
            if self.process is not None and self.process.poll() is not None:
                raise FlowerRunError(
                    f"{self.name} exited with code {self.process.returncode} before it logged "
                    f"{text!r}; see {self.log_path}:\n" + "\n".join(last_lines(self.log_path))
                )
            return False

        self.link.wait_until(f"{self.name} to log {text!r}", logged, patience=patience)

    def pids(self) -> set[int]:
        """The SuperNode and everything below it (its SuperExec and ClientApp processes)."""
        if self.process is None:
            return set()
        return {self.process.pid} | descendants(self.process.pid)

    def kill(self) -> None:
        """The site dies at once (SIGKILL): no goodbye to the SuperLink."""
        pids = self.pids()
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)

    def stop(self) -> set[int]:
        """SIGTERM (the SuperNode signs off), then SIGKILL what is left; returns survivors."""
        left = stop_processes(self.pids())
        if self.process is not None:
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                left.add(self.process.pid)
        return left
