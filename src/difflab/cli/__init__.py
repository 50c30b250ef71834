"""The ``difflab`` command: thin wrappers that parse arguments, call the library and report.

Each sub-command lives in its own module with ``register(subparsers)``; a :class:`DifflabError`
(or an unreadable file) becomes one sentence on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from difflab import __version__
from difflab.cli import convert, evaluate, export, generate, info, lpips, reconstruct, train
from difflab.errors import DifflabError

COMMAND_MODULES = (train, generate, reconstruct, info, export, convert, lpips, evaluate)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one sentence, exit 2, as for every other bad input
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="difflab", description="Diffusion models you can read, trust and train.")
    parser.add_argument("--version", action="version", version=f"difflab {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except DifflabError as error:
        print(f"difflab {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"difflab {args.command}: interrupted.", file=sys.stderr)
        return 130
