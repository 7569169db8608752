"""The `fedxrec` command. Each subcommand lives with the code it drives and registers itself here.

A subcommand's module is imported only when that subcommand is parsed: the modules import torch,
transformers or Flower (seconds), and `fedxrec --help` or `fedxrec rank --help` should not wait for
the federation's. The table below gives each subcommand's one-line summary for `fedxrec --help`
(tests/simulations/test_cli.py checks it against the module's own). A module that fails to
import stops the command with an error naming it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from typing import Any

from shared.cli import run_command


@dataclass(frozen=True)
class Subcommand:
    name: str
    module: str  # registers it (and the other subcommands it names) with `register(subparsers)`
    summary: str  # its `help=` in that module


SUBCOMMANDS = (
    Subcommand(
        "simulate", "simulations.simulate", "run a federation of several platforms on this machine"
    ),
    Subcommand(
        "compare",
        "simulations.compare",
        "compare the federated private recommender with baselines (report + results.json)",
    ),
    Subcommand(
        "audit",
        "simulations.audit",
        "membership-inference audit of the DP model and the same training without DP",
    ),
    Subcommand(
        "certs",
        "server.certs",
        "create the CA, the SuperLink's TLS certificate and the sites' node keys",
    ),
    Subcommand(
        "rank",
        "clients.scorer.cli",
        "rank this site's catalogue for a user history (or a file of users)",
    ),
    Subcommand(
        "serve",
        "clients.scorer.cli",
        "serve rankings over HTTP (POST /rank, GET /health, GET /model, POST /reload)",
    ),
)


class SubcommandUnavailable(RuntimeError):
    """A subcommand's module cannot be imported (a broken or incomplete installation)."""


class LazySubcommands(argparse._SubParsersAction):
    """Subparsers that hold a placeholder per subcommand until it is parsed, then import its
    module and let it register the real parser."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending: dict[str, Subcommand] = {}

    def add_placeholder(self, command: Subcommand) -> None:
        self.add_parser(command.name, help=command.summary)
        self.pending[command.name] = command

    def load(self, name: str) -> None:
        """Replace ``name``'s placeholder (and its module's other ones) by the real parsers."""
        command = self.pending.get(name)
        if command is None:
            return  # already loaded, or unknown (argparse reports that)
        try:
            module = importlib.import_module(command.module)
        except Exception as err:  # any failure at import: the message must name the module
            raise SubcommandUnavailable(
                f"`fedxrec {name}` is unavailable: importing its module {command.module} failed "
                f"({type(err).__name__}: {err}); reinstall fedxrec (make .venv/.installed)"
            ) from err
        siblings = [n for n, c in self.pending.items() if c.module == command.module]
        for sibling in siblings:
            del self._name_parser_map[sibling], self.pending[sibling]
        listed = len(self._choices_actions)
        module.register(self)
        del self._choices_actions[listed:]  # the placeholders' summaries stay the listing
        missing = [n for n in siblings if n not in self._name_parser_map]
        if missing:
            raise SubcommandUnavailable(
                f"{command.module} did not register the subcommand(s) {', '.join(missing)}"
            )

    def load_all(self) -> None:
        for name in list(self.pending):
            self.load(name)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        self.load(values[0])
        super().__call__(parser, namespace, values, option_string)


def subcommands(parser: argparse.ArgumentParser) -> LazySubcommands:
    """The parser's subcommands (to load them all: ``subcommands(parser).load_all()``)."""
    (action,) = [a for a in parser._actions if isinstance(a, LazySubcommands)]
    return action


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedxrec",
        description=(
            "Federated, privacy-preserving, cross-domain recommendation: platforms fine-tune LoRA "
            "adapters of a shared text encoder under user-level differential privacy, a "
            "coordinator aggregates them with Flower, and each site ranks its own catalogue."
        ),
    )
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, action=LazySubcommands
    )
    for command in SUBCOMMANDS:
        sub.add_placeholder(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
