"""The `fedxrec` command. Each subcommand lives with the code it drives and registers itself here."""

from __future__ import annotations

import argparse
import importlib
import sys

from shared.cli import run_command

# module -> registers one or more subcommands with `register(subparsers)`
SUBCOMMAND_MODULES = (
    "simulations.simulate",
    "simulations.compare",
    "simulations.audit",
    "server.certs",
    "clients.scorer.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedxrec",
        description=(
            "Federated, privacy-preserving, cross-domain recommendation: platforms fine-tune LoRA "
            "adapters of a shared text encoder under user-level differential privacy, a "
            "coordinator aggregates them with Flower, and each site ranks its own catalogue."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # that part of fedxrec is not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
