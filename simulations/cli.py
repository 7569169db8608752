"""The `fedxrec` command. Each subcommand lives with the code it drives and registers itself here."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# module -> registers one or more subcommands with `register(subparsers)`
SUBCOMMAND_MODULES = (
    "simulations.simulate",
    "simulations.compare",
    "server.certs",
    "clients.scorer_cli",
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


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    """Run a subcommand; ``parser`` lets one part run alone (e.g. the scorer on a site machine)."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = (parser or build_parser()).parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("fedxrec: interrupted", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError) as err:
        # Our own errors (ConfigError, DataError, AdapterError, ...) explain the fix: no traceback.
        if os.environ.get("FEDXREC_DEBUG"):
            raise
        print(f"fedxrec {args.command}: error: {err}", file=sys.stderr)
        print("(set FEDXREC_DEBUG=1 to see the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
