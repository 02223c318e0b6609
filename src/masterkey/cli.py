"""The command-line layer: ``masterkey COMMAND ...``. Each command lives in ``masterkey.commands.<name>`` and
defines ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; with no command the main job runs."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

from masterkey.errors import MasterkeyError

MAIN_JOB = "discover"


def _commands() -> dict[str, ModuleType]:
    import masterkey.commands as pkg

    found = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            module = importlib.import_module(f"masterkey.commands.{info.name}")
            found[getattr(module, "NAME", info.name)] = module
    return dict(sorted(found.items(), key=lambda kv: (getattr(kv[1], "ORDER", 99), kv[0])))


def build_parser() -> argparse.ArgumentParser:
    from masterkey import __version__

    parser = argparse.ArgumentParser(
        prog="masterkey",
        description=(
            "Master key filters of depthwise-separable CNNs: harvest filters into banks, discover and fit key sets, "
            "swap keys into networks, train with frozen keys, and report. With no command, runs the main job "
            f"('{MAIN_JOB}' on the embedded default bank)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"masterkey {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _commands().items():
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``masterkey`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _log_to_stderr()
    parser = build_parser()
    if not argv:
        argv = [MAIN_JOB] if MAIN_JOB in _commands() else ["fit"]
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except MasterkeyError as exc:
        print(f"masterkey: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("masterkey: interrupted", file=sys.stderr)
        return 130


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (so redirection and test capture work)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def _log_to_stderr() -> None:
    """Library notes (skipped layers, resumed runs) go to stderr as ``masterkey: ...``; stdout stays for results."""
    logger = logging.getLogger("masterkey")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("masterkey: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


if __name__ == "__main__":
    sys.exit(main())
