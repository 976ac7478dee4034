"""The ``landcover`` command: a thin skin over the Python API, one module per workflow step.

Each module in :data:`COMMANDS` defines ``register(subparsers)``, which adds its subcommand(s) and sets
``func(args) -> int`` on the parser. The API runs within :func:`~landcover.errors.cli_spelling`, so its
messages name the flags the user typed. User errors (:class:`~landcover.errors.LandcoverError`) and bad usage
print one line on stderr and exit with code 2, as do errors of the system (disk full, permissions).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import sys
import warnings

from ..errors import LandcoverError, cli_spelling
from ..gdal_messages import routed as routed_gdal_messages

#: Subcommand modules, in workflow order.
COMMANDS = ("export", "train", "classify", "evaluate", "demo", "interop", "serve")
#: commands whose interrupted run continues with --resume
RESUMABLE = ("classify",)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but bad usage prints a single line (and exit code 2) instead of usage plus message."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def refuse_existing(overwrite: bool, *paths) -> None:
    """Outputs are not replaced without --overwrite (as classify and train do): one line naming the file."""
    from pathlib import Path

    for path in paths:
        if path is not None and Path(path).exists() and not overwrite:
            raise LandcoverError(f"{path}: exists; add --overwrite to replace it")


def warning_line(command: str):
    """A printer of a step's own warning as one ``landcover COMMAND: warning:`` line on stderr, at once (a long
    run can still be stopped and rerun with what the warning suggests)."""
    return lambda message: print(f"landcover {command}: warning: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def own_warnings(category: type[Warning], handle):
    """Inside the block, warnings of ``category`` (landcover's own, always shown) go to ``handle(message)``;
    any other warning (e.g. a dependency's deprecation notice) keeps Python's filters and display."""
    show = warnings.showwarning

    def showwarning(message, cat, filename, lineno, file=None, line=None):
        if issubclass(cat, category):
            handle(str(message))
        else:
            show(message, cat, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.simplefilter("always", category)
        warnings.showwarning = showwarning
        yield


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = OneLineParser(
        prog="landcover",
        description="From raw imagery to a land-cover map: export training chips, train a U-Net, classify "
        "rasters of any size, evaluate and map the result.",
    )
    parser.add_argument("--version", action="version", version=f"landcover {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        # messages name arguments as the flags the user typed; GDAL's own messages go through one handler
        with cli_spelling(), routed_gdal_messages(getattr(args, "out", None)):
            return int(args.func(args) or 0)
    except LandcoverError as exc:
        print(f"landcover {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the disk is full, a file vanished, a permission: the system's words suffice
        where = f"{exc.filename}: " if exc.filename else ""
        # (classify says itself whether --resume then continues: only it knows whether finished blocks are kept)
        hint = "; free some space" if exc.errno == errno.ENOSPC else ""
        print(f"landcover {args.command}: error: {where}{exc.strerror or exc}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = "; rerun with --resume to continue" if args.command in RESUMABLE else ""
        print(f"landcover {args.command}: interrupted{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
