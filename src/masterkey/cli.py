"""The command-line layer: ``masterkey COMMAND ...``. Each command lives in ``masterkey.commands.<name>`` and
defines ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; with no command the main job runs."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
import traceback
from collections.abc import Sequence
from types import ModuleType
from typing import Any, NoReturn

from masterkey.errors import MasterkeyError, command_line_options

MAIN_JOB = "discover"
#: Exit statuses: bad input or an expected failure; a genuine bug; a closed output pipe (as SIGPIPE would);
#: an interruption (as SIGINT would).
EXIT_ERROR, EXIT_BUG, EXIT_PIPE, EXIT_INTERRUPTED = 2, 1, 141, 130


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other masterkey error."""

    def error(self, message: str) -> NoReturn:
        print(f"masterkey: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        sys.exit(EXIT_ERROR)


def _commands() -> dict[str, ModuleType]:
    import masterkey.commands as pkg

    found = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            module = importlib.import_module(f"masterkey.commands.{info.name}")
            found[getattr(module, "NAME", info.name)] = module
    return dict(sorted(found.items(), key=lambda kv: (getattr(kv[1], "ORDER", 99), kv[0])))


class _VersionAction(argparse.Action):
    """``--version``: the installed version is looked up only when asked (the look-up costs a tenth of a second)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from masterkey import __version__

        print(f"masterkey {__version__}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    from masterkey.commands._common import add_progress_argument

    parser = _Parser(
        prog="masterkey",
        description=(
            "Master key filters of depthwise-separable CNNs: harvest filters into banks, discover and fit key sets, "
            "swap keys into networks, train with frozen keys, and report. With no command, runs the main job "
            f"('{MAIN_JOB}' on the embedded default bank)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_VersionAction, help="show program's version number and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module in _commands().items():
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        add_progress_argument(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``masterkey`` console script: the one error boundary of the CLI.

    Expected failures become one line ``masterkey: error: ...`` and exit status 2: bad input
    (:class:`MasterkeyError`, argument errors), operating-system errors (no space, permission, read-only, ...)
    naming the file, running out of memory. A closed output pipe (``masterkey ... | head -1``) ends the command
    quietly, as it ends Unix tools. Only a genuine bug shows a traceback, followed by a line asking for a report.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    _log_to_stderr()
    if sys.stdout is None:  # started with stdout closed (``>&-``): say so before any work
        _error("standard output is closed; redirect it to a file or to /dev/null instead of closing it")
        return EXIT_ERROR
    stdout, sys.stdout = sys.stdout, NamedStdout(sys.stdout)
    try:
        with command_line_options():
            return _dispatch(argv)
    except SystemExit as exc:  # argparse: --help, --version, argument errors
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_PIPE
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except MasterkeyError as exc:
        _error(str(exc))
    except OSError as exc:
        from masterkey.files import describe_os_error

        _error(describe_os_error(exc, verb="access"))
    except MemoryError:
        _error("out of memory: ask for less (smaller batches, chunks, images or key sets)")
    except RuntimeError as exc:
        if not _out_of_memory(exc):
            return _bug()
        _error(f"out of memory ({_first_line(exc)}): ask for less (smaller batches, chunks, images or key sets)")
    except Exception:
        return _bug()
    finally:
        sys.stdout = stdout
    return EXIT_ERROR


class NamedStdout:
    """``sys.stdout`` while a command runs: an error writing to it (a full disk, ``/dev/full``, an I/O error) is one
    line naming standard output, not a nameless OS error. A closed pipe still ends the command as SIGPIPE would."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def _call(self, name: str, *args: Any) -> Any:
        try:
            return getattr(self._stream, name)(*args)
        except BrokenPipeError:
            raise
        except OSError as exc:
            from masterkey.atomic import describe_os_error

            raise MasterkeyError(describe_os_error(exc, "standard output")) from None

    def write(self, text: str) -> int:
        return self._call("write", text)

    def writelines(self, lines: Any) -> None:
        self._call("writelines", lines)

    def flush(self) -> None:
        self._call("flush")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _dispatch(argv: list[str]) -> int:
    parser = build_parser()
    if not argv:
        argv = [MAIN_JOB] if MAIN_JOB in _commands() else ["fit"]
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return EXIT_ERROR
    code = int(args._run(args) or 0)
    sys.stdout.flush()  # a closed pipe shows here, inside the boundary, not at interpreter exit
    return code


def _error(message: str) -> None:
    """Print ``masterkey: error: <message>`` as one line (a message with line breaks has them joined)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()] or ["failed"]
    print(f"masterkey: error: {'; '.join(lines)}", file=sys.stderr)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _out_of_memory(exc: RuntimeError) -> bool:
    """torch reports a failed allocation as a RuntimeError (``torch.OutOfMemoryError`` on CUDA)."""
    import torch

    text = str(exc)
    return isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in text or "out of memory" in text


def _bug() -> int:
    traceback.print_exc()
    print(
        "masterkey: internal error: this is a bug in masterkey; please report it with the command line, the "
        "traceback above and the output of 'masterkey --version'",
        file=sys.stderr,
    )
    return EXIT_BUG


def _silence_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so that the interpreter's final flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file descriptor (e.g. captured output)
        pass


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
