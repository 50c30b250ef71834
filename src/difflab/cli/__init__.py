"""The ``difflab`` command: thin wrappers that parse arguments, call the library and report.

Each sub-command lives in its own module with ``register(subparsers)``; a :class:`DifflabError`
(or an unreadable file) becomes one sentence on stderr and exit status 2, never a traceback.
Every numeric option is checked once here for every command (finite, within 64 bits). Any other
exception is one sentence too, status 1, with ``--debug`` to see its traceback; a closed pipe
(``difflab info ... | head -1``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator

from PIL import Image

from difflab import __version__
from difflab.cli import (
    convert,
    evaluate,
    export,
    generate,
    hint,
    info,
    lpips,
    reconstruct,
    serve,
    text_to_image,
    train,
)
from difflab.cli.common import held_notes
from difflab.errors import DifflabError
from difflab.io.lock import release_all
from difflab.io.validation import check_number, shorten

COMMAND_MODULES = (
    train,
    generate,
    reconstruct,
    info,
    export,
    convert,
    lpips,
    evaluate,
    serve,
    hint,
    text_to_image,
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one sentence, exit 2, as for every other bad input
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`.\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="difflab", description="Diffusion models you can read, trust and train.")
    parser.add_argument("--version", action="version", version=f"difflab {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    for command in subparsers.choices.values():  # --debug after the command name works too
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    return parser


DEBUG_HELP = "show the traceback of an unexpected error"


def check_numeric_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse NaN, infinite and beyond-64-bit values of any numeric option of any command."""
    command = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr]
    for action in command._actions:
        value = getattr(args, action.dest, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            flag = action.option_strings[0] if action.option_strings else action.dest
            check_number(value, flag)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    name = f"difflab {args.command}"
    try:
        with warnings.catch_warnings(), _terminate_as_interrupt(), held_notes():
            # a header that claims ~10^8 pixels: an error of the file, not a warning beside one
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            check_numeric_options(parser, args)
            code = int(args.handler(args) or 0)
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
            return code
    except DifflabError as error:
        print(f"{name}: error: {shorten(str(error), 2000)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted.", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{name}: terminated.", file=sys.stderr)
        return 143
    except BrokenPipeError:  # the reader went away (| head): stop quietly, like any Unix tool
        _silence_stdout()
        return 141
    except Exception as error:
        if args.debug:
            traceback.print_exc()
        reason = shorten(str(error), 300) or "no message"
        print(
            f"{name}: error: unexpected {type(error).__name__} ({reason}); run with --debug for "
            "the traceback.",
            file=sys.stderr,
        )
        return 1
    finally:
        release_all()  # run-folder locks this command took (the kernel would at exit)


class Terminated(BaseException):
    """SIGTERM (``timeout``, a scheduler) raised as an exception so that cleanup runs."""


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while a command runs (in the main thread only), so
    that a stopped run leaves no half-made folder; the previous handler comes back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush does not fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # an in-memory stdout (tests): nothing to do
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
