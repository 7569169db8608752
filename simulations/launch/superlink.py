"""Run a Flower app on a SuperLink that we start ourselves and always stop, by PID.

``flwr run`` with its default local connection would start a detached SuperLink that installs
packages at run time. Instead: a private ``FLWR_HOME``, ``flower-superlink`` with runtime dependency
installation disabled on a free loopback port, ``flwr run --stream`` against it, and, whatever
happens (failure, Ctrl-C, SIGTERM), every process the SuperLink started is killed. The SuperLink's
children start sessions of their own (flower-superexec, flwr-simulation, Ray's workers), so they
are found by a tag in their environment and by parentage, not by process group alone.

The same launcher runs a deployment on one machine (tests, benchmarks): ``certs`` turns on TLS
(a ``fedxrec certs init`` ``superlink/`` folder) and ``node_auth`` SuperNode authentication;
simulations/launch/deployment.py starts the SuperNodes.
"""

from __future__ import annotations

import json
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Protocol, TypeVar

from simulations.launch.processes import (
    TAG_VARIABLE,
    flower_env,
    free_port,
    stop_processes,
    tagged_processes,
)
from simulations.launch.progress import (
    FlowerRunError,
    Patience,
    Progress,
    Watched,
    last_lines,
    wait_for,
)

T = TypeVar("T")
STARTUP = Patience(stall=60.0, cap=600.0)  # a SuperLink starting
CLI = Patience(stall=60.0, cap=600.0)  # one `flwr` CLI call
RUN = Patience(stall=600.0, cap=None)  # a run: fails only when nothing moved for 10 minutes


class Watchable(Protocol):
    def watched(self) -> Watched: ...


# ---- the SuperLink ------------------------------------------------------------------------------


class LocalSuperLink:
    """A SuperLink process on 127.0.0.1 with a connection named ``name`` in ``FLWR_HOME``.

    Without ``certs`` it runs insecure (loopback only, inside one machine); with a folder holding
    ``ca.crt``, ``server.pem`` and ``server.key`` it serves TLS, and ``node_auth`` admits only
    SuperNodes whose public key was registered (``register_supernode``) before they connect.
    """

    def __init__(
        self,
        home: Path,
        *,
        simulation: bool,
        use_gpu: bool = False,
        name: str = "fedxrec",
        certs: Path | None = None,
        node_auth: bool = False,
    ):
        if node_auth and certs is None:
            raise ValueError("SuperNode authentication needs TLS: pass the SuperLink's certs")
        self.home, self.name, self.simulation = Path(home), name, simulation
        self.certs = Path(certs).resolve() if certs else None
        self.node_auth = node_auth
        self.tag = uuid.uuid4().hex
        self.env = flower_env(self.home, use_gpu=use_gpu)
        self.env[TAG_VARIABLE] = self.tag
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.log_path = self.home / "superlink.log"
        self.nodes: list[Watchable] = []  # the SuperNodes started against it (launch/deployment)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path | None:
        return self.certs / "ca.crt" if self.certs else None

    def _security_flags(self) -> list[str]:
        if self.certs is None:
            return ["--insecure"]
        flags = [
            "--ssl-ca-certfile",
            str(self.certs / "ca.crt"),
            "--ssl-certfile",
            str(self.certs / "server.pem"),
            "--ssl-keyfile",
            str(self.certs / "server.key"),
        ]
        return flags + (["--enable-supernode-auth"] if self.node_auth else [])

    def _health_url_context(self) -> tuple[str, ssl.SSLContext | None]:
        if self.ca_file is None:
            return f"http://{self.address}/health", None
        return f"https://{self.address}/health", ssl.create_default_context(cafile=self.ca_file)

    def _watched(self, busy: bool = False) -> Watched:
        pid = self.process.pid if self.process else None
        return Watched(f"SuperLink {self.address}", pid, self.log_path, busy)

    def watched(self) -> list[Watched]:
        """The SuperLink and every SuperNode started against it: what a wait on it watches."""
        return [self._watched(), *(node.watched() for node in self.nodes)]

    def wait_until(
        self,
        what: str | Callable[[], str],
        done: Callable[[], T | None],
        *,
        folders: Iterable[Path] = (),
        patience: Patience = RUN,
        also: Iterable[Watched] = (),
        counter: Callable[[], int] | None = None,
        poll: float = 0.5,
    ) -> T:
        """``wait_for`` ``done``, watching this federation's processes, their logs and
        ``folders``: it fails only when none of them progressed for ``patience.stall`` s."""
        progress = Progress([*self.watched(), *also], folders, counter, "`flwr run` output")
        return wait_for(what, done, progress, patience, poll)

    def start(self, patience: Patience = STARTUP) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        security = (
            f'root-certificates = "{self.ca_file}"\n' if self.ca_file else "insecure = true\n"
        )
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{self.name}"\n\n'
            f'[superlink.{self.name}]\naddress = "{self.address}"\n{security}'
        )
        command = [
            "flower-superlink",
            *self._security_flags(),
            "--disable-runtime-dependency-installation",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        if self.simulation:
            command.append("--simulation")
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                command,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.home,
            )
        url, context = self._health_url_context()

        def healthy() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise FlowerRunError(
                    f"flower-superlink exited with code {self.process.returncode}; see "
                    f"{self.log_path}:\n" + "\n".join(last_lines(self.log_path))
                )
            try:
                with urllib.request.urlopen(url, timeout=1, context=context) as r:
                    return r.status == 200
            except OSError:
                return False

        progress = Progress([self._watched(busy=True)])
        wait_for(f"the SuperLink to answer {url}", healthy, progress, patience, 0.2)

    def stop(self) -> set[int]:
        """Stop the SuperLink and everything it started; returns any PID that survived."""
        root = self.process.pid if self.process else None
        pids = tagged_processes(self.tag, root)
        if root is not None:
            pids.add(root)
        left = stop_processes(pids)
        if self.process is not None:
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
        return left

    def flwr(self, *args: str, patience: Patience = CLI) -> subprocess.CompletedProcess:
        """One ``flwr`` CLI call; it fails when neither it nor the SuperLink got anywhere for
        ``patience.stall`` s (it is killed then)."""
        command = ["flwr", *args]
        proc = subprocess.Popen(
            command,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )

        def finished() -> tuple[str, str] | None:
            try:
                return proc.communicate(timeout=0.5)
            except subprocess.TimeoutExpired:
                return None

        progress = Progress(
            [Watched(f"`flwr {args[0]}`", proc.pid, busy=True), self._watched(True)]
        )
        try:
            out, err = wait_for(f"`{' '.join(command)}` to finish", finished, progress, patience, 0)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        return subprocess.CompletedProcess(command, proc.returncode, out, err)

    def run_app(
        self,
        app_dir: Path,
        *,
        run_config: Path | None = None,
        federation_config: str = "",
        on_line: Callable[[str], None] = lambda line: print(line, end="", flush=True),
        log_path: Path | None = None,
        folders: Iterable[Path] = (),
        patience: Patience = RUN,
    ) -> int:
        """``flwr run --stream``; returns the run id once the run finished successfully. It is
        stopped (and this raises) when neither its output, this federation's processes and logs
        nor ``folders`` progressed for ``patience.stall`` s."""
        command = ["flwr", "run", str(app_dir), self.name, "--stream"]
        if federation_config:
            command += ["--federation-config", federation_config]
        if run_config is not None:
            command += ["--run-config", str(run_config)]
        found: list[int] = []
        lines = [0]
        log = log_path.open("w", buffering=1) if log_path else None  # line by line: its report
        proc = subprocess.Popen(
            command,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            start_new_session=True,
        )

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if log:
                    log.write(line)
                on_line(line)
                lines[0] += 1
                if not found and (m := re.search(r"started run (\d+)", line)):
                    found.append(int(m.group(1)))

        reader = threading.Thread(target=read, name="flwr-run-output", daemon=True)
        reader.start()
        try:
            code = self.wait_until(
                lambda: f"`flwr run` to end (run {found[0] if found else 'not started yet'})",
                lambda: None if reader.is_alive() else proc.wait(),
                folders=folders,
                patience=patience,
                also=[Watched("`flwr run --stream`", proc.pid, log_path)],
                counter=lambda: lines[0],
            )
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            reader.join(timeout=5)
            if log:
                log.close()
        if not found:
            raise FlowerRunError(f"`flwr run` did not start a run (exit code {code})")
        status = self.run_status(found[0])
        # `flwr run --stream` exits 0 even when the ServerApp failed: the run's status tells.
        if status != "finished:completed":
            raise FlowerRunError(f"Flower run {found[0]} ended with status '{status}'")
        return found[0]

    def start_run(self, app_dir: Path, *, run_config: Path | None = None) -> int:
        """``flwr run`` without streaming: returns the new run's id at once."""
        command = ["run", str(app_dir), self.name]
        if run_config is not None:
            command += ["--run-config", str(run_config)]
        result = self.flwr(*command)
        if not (m := re.search(r"started run (\d+)", result.stdout)):
            raise FlowerRunError(f"`flwr run` did not start a run: {result.stdout}{result.stderr}")
        return int(m.group(1))

    def wait_for_run(
        self, run_id: int, *, folders: Iterable[Path] = (), patience: Patience = RUN
    ) -> str:
        """Wait until the run is finished; returns its status (e.g. "finished:completed").

        The SuperLink logs when the run's ServerApp task ends; the status is asked then (and
        every 30 s besides, a `flwr ls` being a process of its own)."""
        ended = re.compile(rf"Finished task \d+ of run {run_id}\b".encode())
        status = ["not asked yet"]
        asked, offset = [time.monotonic()], [0]

        def finished() -> str | None:
            with self.log_path.open("rb") as fh:
                fh.seek(offset[0])
                new = fh.read()
            offset[0] += new.rfind(b"\n") + 1  # a partial last line is read again next time
            if ended.search(new) or time.monotonic() - asked[0] > 30:
                status[0], asked[0] = self.run_status(run_id), time.monotonic()
                if status[0].startswith("finished"):
                    return status[0]
            return None

        return self.wait_until(
            lambda: f"Flower run {run_id} to finish (its status: {status[0]})",
            finished,
            folders=folders,
            patience=patience,
        )

    def register_supernode(self, public_key: Path) -> int:
        """Admit the SuperNode holding this key's private half; returns its node id."""
        result = self.flwr("supernode", "register", str(public_key), self.name, "--format", "json")
        try:
            return int(json.loads(result.stdout)["node-id"])
        except (ValueError, KeyError) as err:
            raise FlowerRunError(
                f"could not register {public_key}: {result.stdout}{result.stderr}"
            ) from err

    def supernodes(self) -> list[dict]:
        """`flwr supernode ls`: every SuperNode the SuperLink knows, with its status."""
        result = self.flwr("supernode", "ls", self.name, "--format", "json")
        try:
            data = json.loads(result.stdout)
        except ValueError:
            return []
        return list(data.get("nodes", data) if isinstance(data, dict) else data)

    def run_status(self, run_id: int) -> str:
        result = self.flwr("ls", self.name, "--run-id", str(run_id), "--format", "json")
        try:
            return str(json.loads(result.stdout)["runs"][0]["status"])
        except (ValueError, KeyError, IndexError):
            return f"unknown ({result.stdout.strip() or result.stderr.strip()})"


@contextmanager
def local_superlink(
    home: Path, *, simulation: bool, use_gpu: bool = False
) -> Iterator[LocalSuperLink]:
    """Start a SuperLink; stop it and all its processes on exit, even on Ctrl-C or SIGTERM."""
    link = LocalSuperLink(home, simulation=simulation, use_gpu=use_gpu)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):  # turn SIGTERM into an exception so `finally` runs
        raise KeyboardInterrupt(f"signal {signum}")

    if main_thread:
        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        link.start()
        yield link
    finally:
        left = link.stop()
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        if left:
            print(f"warning: processes {sorted(left)} did not stop", file=sys.stderr)
