"""The `sketchreid` command: one sub-command per job.

Each command module exposes ``register(subparsers)`` and sets ``func`` on its parser; the
function receives the parsed namespace and returns an exit code. Errors meant for a person
(:class:`app.errors.SketchReidError`) become one line on stderr and exit code 2.

PyTorch is an extra (``.[train]``): the serving install has none. A command that needs it
(training, evaluation, exporting) then says so in one line, exit code 2, whether its module
cannot be imported without PyTorch (its commands are still listed) or it reaches for PyTorch
while it runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from app.errors import SketchReidError

# Modules under app.cli that contribute sub-commands, in the order `--help` lists them, with
# the commands each one registers (listed even where the module needs PyTorch and it is absent).
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "app.cli.data_cmd": ("data",),
    "app.cli.train_cmd": ("train",),
    "app.cli.evaluate_cmd": ("evaluate", "crossval"),
    "app.cli.model_cmd": ("model",),
    "app.cli.service_cmd": (
        "serve",
        "db",
        "apikey",
        "searches",
        "sweep-orphans",
        "ingest",
    ),
    "app.cli.worker_cmd": ("worker",),
}
TORCH_MODULES = ("torch", "torchvision")
TORCH_MISSING = (
    "needs PyTorch, which this installation does not have (the serving install); "
    "install it with pip install 'sketch-reid[train]'"
)


def _needs_torch(args: argparse.Namespace) -> int:
    print(f"sketchreid {args.command}: error: {TORCH_MISSING}", file=sys.stderr)
    return 2


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with ``command`` only of the module that registers it:
    `sketchreid serve` does not import the training code (nor PyTorch, when installed)."""
    parser = argparse.ArgumentParser(
        prog="sketchreid",
        description="Forensic sketch search: train, evaluate and serve sketch-to-photo re-id.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, commands in COMMAND_MODULES.items():
        if command is not None and command not in commands:
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # not written yet
                continue
            if exc.name not in TORCH_MODULES:
                raise
            for stubbed in commands:
                stub = sub.add_parser(
                    stubbed, help=f"({TORCH_MISSING})", add_help=False, prefix_chars="\x00"
                )
                stub.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
                stub.set_defaults(func=_needs_torch)
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    known = {c for commands in COMMAND_MODULES.values() for c in commands}
    parser = build_parser(argv[0] if argv and argv[0] in known else None)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        code = args.func(args)
    except SketchReidError as exc:
        print(f"sketchreid {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if exc.name not in TORCH_MODULES:
            raise
        return _needs_torch(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
