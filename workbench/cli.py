"""The ``workbench`` command line.

Each area registers its own commands from a light module (no heavy imports at module level), so
``workbench --help`` stays fast; handlers import what they need when they run.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# Modules with a ``register(subparsers)`` function, in help order. ``workbench`` imports nothing
# of ``rm``/``policy``/``annotation_ui`` at import time; their commands load lazily here.
COMMAND_MODULES = (
    "workbench.cli_core",
    "workbench.diagnostics.cli",
    "rm.choice.cli",
    "rm.cli",
    "policy.cli",
    "annotation_ui.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workbench",
        description="Preference workbench: a versioned store of pairwise preference labels, "
        "annotation UI, reward models, diagnostics and policy stages.",
    )
    parser.add_argument(
        "--db", default=None,
        help="store URL or SQLite path (default: $WORKBENCH_DB or ./workbench.db); "
        "e.g. postgresql+psycopg://user@localhost/workbench",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # that area is not installed in this checkout
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        # A command group without its subcommand prints that group's help.
        target = getattr(args, "_group_parser", parser)
        target.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, LookupError, RuntimeError, OSError) as exc:
        # Expected failures (bad input, unknown names, tampered files) print one clear line.
        from .frames import InvalidRows

        print(f"error: {exc}", file=sys.stderr)
        if isinstance(exc, InvalidRows) and exc.rejects.height > 1:
            for row in exc.rejects.head(10).iter_rows(named=True):
                print(f"  line {row['line']}: {row['field']}: {row['reason']}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
