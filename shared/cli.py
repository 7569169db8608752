"""How every fedxrec command runs: process defaults, then the subcommand, errors as one line.

Our own errors (ConfigError, DataError, AdapterError, ...) say what to fix, so they end the
command with exit code 2 and no traceback (``FEDXREC_DEBUG=1`` shows it); Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import os
import sys

from shared.process import set_process_defaults


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv`` with ``parser`` and run the chosen subcommand's ``run(args)``."""
    set_process_defaults()
    command = "fedxrec"
    try:
        # Parsing may import the subcommand's module (simulations/cli.py), which may fail too.
        args = parser.parse_args(argv)
        command = f"fedxrec {args.command}"
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("fedxrec: interrupted", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError) as err:
        if os.environ.get("FEDXREC_DEBUG"):
            raise
        print(f"{command}: error: {err}", file=sys.stderr)
        print("(set FEDXREC_DEBUG=1 to see the traceback)", file=sys.stderr)
        return 2
