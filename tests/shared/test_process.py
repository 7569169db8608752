"""Process-wide settings: the training processes' malloc settings."""

import sys

import pytest

from shared import process


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_glibc_accepts_every_setting_of_a_training_process():
    # mallopt answers 0 for a value it refuses (e.g. an mmap threshold above 32 MiB)
    assert process.keep_freed_memory() is True


def test_elsewhere_nothing_is_changed(monkeypatch):
    monkeypatch.setattr(process.sys, "platform", "darwin")
    monkeypatch.setattr(process.ctypes, "CDLL", lambda name: pytest.fail("libc was loaded"))
    assert process.keep_freed_memory() is False


def test_a_c_library_without_mallopt_is_left_alone(monkeypatch):
    monkeypatch.setattr(process.sys, "platform", "linux")

    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(process.ctypes, "CDLL", missing)
    assert process.keep_freed_memory() is False
