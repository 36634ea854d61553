"""The `sketchreid` command: one sub-command per job.

Each command module exposes ``register(subparsers)`` and sets ``func`` on its parser; the
function receives the parsed namespace and returns an exit code. Errors meant for a person
(:class:`app.errors.SketchReidError`) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from app.errors import SketchReidError

# Modules under app.cli that contribute sub-commands, in the order `--help` lists them.
COMMAND_MODULES = (
    "app.cli.data_cmd",
    "app.cli.train_cmd",
    "app.cli.evaluate_cmd",
    "app.cli.model_cmd",
    "app.cli.service_cmd",
    "app.cli.worker_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sketchreid",
        description="Forensic sketch search: train, evaluate and serve sketch-to-photo re-id.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # not written yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        code = args.func(args)
    except SketchReidError as exc:
        print(f"sketchreid {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
