"""The `fedxrec` command: subcommands load on use, so help is instant; a broken one is an error."""

import argparse
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from server.run_log import METRICS_FILE
from simulations import cli
from simulations.cli import SUBCOMMANDS, Subcommand, build_parser, main, subcommands

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "peft", "flwr", "opacus", "scipy")


def heavy_modules_after(code: str) -> list[str]:
    """The heavy libraries a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport sys\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return eval(done.stdout.strip().splitlines()[-1])


def test_building_the_parser_imports_no_heavy_library():
    assert heavy_modules_after("from simulations.cli import build_parser; build_parser()") == []


# compare and audit still import torch at their module's top (simulations/compare, audit.py)
@pytest.mark.parametrize("command", ["rank", "serve", "simulate", "certs"])
def test_a_subcommands_help_imports_no_heavy_library(command):
    code = (
        "import contextlib, io\n"
        "from simulations.cli import build_parser\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out, "
        "contextlib.suppress(SystemExit):\n"
        f"    build_parser().parse_args([{command!r}, '--help'])\n"
        f"assert 'usage: fedxrec {command}' in out.getvalue(), out.getvalue()"
    )
    assert heavy_modules_after(code) == []


def test_the_listed_summaries_are_the_modules_own():
    for command in SUBCOMMANDS:
        plain = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(command.module).register(plain)
        (own,) = [a.help for a in plain._choices_actions if a.dest == command.name]
        assert own == command.summary, command.name


def test_every_subcommand_loads_with_its_options(capsys):
    parser = build_parser()
    subcommands(parser).load_all()
    assert not subcommands(parser).pending
    args = parser.parse_args(["rank", "--adapter", "a", "--items", "b", "--history", "m1"])
    assert args.command == "rank" and args.k == 10 and callable(args.run)
    args = parser.parse_args(["certs", "add-site", "s1", "--out", "o"])
    assert args.name == "s1"
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    listing = capsys.readouterr().out
    for command in SUBCOMMANDS:  # listed once each, with its summary, after loading
        line = rf"^    {command.name} +{re.escape(command.summary[:20])}"
        assert len(re.findall(line, listing, re.M)) == 1, listing


@pytest.mark.parametrize("broken", ["missing", "missing dependency"])
def test_a_subcommand_whose_module_fails_to_import_is_an_error_naming_it(
    monkeypatch, capsys, tmp_path, broken
):
    module = "simulations.no_such_module"
    if broken == "missing dependency":  # the module is there, but imports what is not installed
        (tmp_path / "extra_commands.py").write_text("import no_such_dependency\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        module = "extra_commands"
    monkeypatch.setattr(cli, "SUBCOMMANDS", (*SUBCOMMANDS, Subcommand("ghost", module, "boo")))
    monkeypatch.delenv("FEDXREC_DEBUG", raising=False)
    assert main(["ghost"]) == 2
    err = capsys.readouterr().err
    assert f"importing its module {module} failed" in err and "Traceback" not in err
    # the other subcommands still work
    assert main(["certs", "add-site", "s1", "--out", str(tmp_path / "none")]) == 2
    assert "ca" in capsys.readouterr().err.lower()


def test_simulate_lists_the_run_log_file_it_replaces():
    from simulations.simulate import OUTPUTS

    assert METRICS_FILE in OUTPUTS
