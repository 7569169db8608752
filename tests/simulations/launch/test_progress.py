"""Waits on Flower processes end when nothing progresses, not at a fixed time, and say who waited
on what (simulations/launch/progress.py), checked with plain child processes."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from simulations.launch.progress import Patience, Progress, WaitError, Watched, wait_for

SHORT = Patience(stall=1.5, cap=30.0)


@pytest.fixture
def start(tmp_path):
    """Start ``python -c CODE`` with its output in a log; every one is killed by PID after."""
    started: list[subprocess.Popen] = []

    def run(code: str, name: str = "child") -> tuple[subprocess.Popen, Watched]:
        log = tmp_path / f"{name}.log"
        with log.open("w") as fh:
            proc = subprocess.Popen([sys.executable, "-u", "-c", code], stdout=fh, stderr=fh)
        started.append(proc)
        return proc, Watched(name, proc.pid, log)

    yield run
    for proc in started:
        proc.kill()
        proc.wait()


def test_a_process_that_keeps_logging_is_waited_for_past_the_stall_window(start):
    proc, watched = start("import time\nfor i in range(8):\n    print('step', i); time.sleep(0.5)")
    code = wait_for("the child to end", proc.poll, Progress([watched]), SHORT, poll=0.1)
    assert code == 0  # it ran 4 s, over twice the 1.5 s stall window


def test_a_silent_process_fails_the_wait_naming_it_and_its_last_lines(start):
    proc, watched = start("print('loaded the model'); import time; time.sleep(60)", "SuperNode x")
    time.sleep(0.5)
    started = time.monotonic()
    with pytest.raises(WaitError) as err:
        wait_for("SuperNode x to log 'done'", lambda: None, Progress([watched]), SHORT, poll=0.1)
    assert time.monotonic() - started < 10
    text = str(err.value)
    assert "gave up waiting for SuperNode x to log 'done'" in text
    assert "nothing progressed for" in text
    assert f"SuperNode x (PID {proc.pid}, running" in text
    assert "loaded the model" in text  # the last line of its log


def test_a_computing_process_is_progress_and_the_cap_still_ends_the_wait(start, monkeypatch):
    monkeypatch.setattr("simulations.launch.progress.CPU_WINDOW", 0.5)
    proc, watched = start("while True: pass", "busy")
    watched.busy = True
    started = time.monotonic()
    with pytest.raises(WaitError, match="still not done after the cap of 4 s"):
        wait_for("it", lambda: None, Progress([watched]), Patience(stall=1.5, cap=4.0), 0.1)
    assert time.monotonic() - started >= 4.0  # never stalled: it was computing all along


def test_our_own_polling_in_a_log_is_no_progress(tmp_path):
    log = tmp_path / "superlink.log"
    log.write_text("")
    progress = Progress([Watched("SuperLink", None, log)])
    with log.open("a") as fh:
        fh.write('INFO:      ControlServicer.ListRuns\n"POST /v1/control/list-runs" 200\n')
    progress.poll()
    assert progress.last_move.startswith("nothing yet")
    with log.open("a") as fh:
        fh.write("INFO:      [Fleet.PushMessages] Push replies from node_id=1\n")
    progress.poll()
    assert progress.last_move == "a new line in SuperLink's log"
