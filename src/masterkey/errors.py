"""The one exception type users see, and how its messages name options.

The library is used two ways: from Python (``fit_bank(..., resize_keys=True)``) and from the command line
(``masterkey fit --resize-keys``). A message that tells the user what to change names the option through
:func:`option`, which speaks the caller's language: the keyword argument by default, the flag once the command line
has switched it on (:func:`command_line_options`, entered by :func:`masterkey.cli.main`). Library code therefore never
writes a flag itself (``tests/test_structure.py`` checks), and the command layer needs no table of translations.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["MasterkeyError", "command_line_options", "option"]

# An environment variable rather than a module global: the worker processes that ``train --jobs`` spawns (and data
# loader workers) inherit it, so their messages name flags too.
_CLI_ENV = "MASTERKEY_OPTION_STYLE"
_UNSET = object()


class MasterkeyError(ValueError):
    """Bad input or an impossible request.

    The message is one line that names the file or argument and says what was expected; the CLI prints it as
    ``masterkey: error: <message>`` and exits with status 2. A subclass of :class:`ValueError`, so that callers that
    caught the ``ValueError`` some functions raised before they raised this keep working; code that catches
    ``ValueError`` around library calls re-raises this one first.
    """


def option(keyword: str, value: object = _UNSET, *, flag: str | None = None) -> str:
    """How a message names the option ``keyword`` (optionally with the ``value`` it was given or should be given).

    From Python: ``image_size=N`` (``option("image_size", "N")``) or ``resize_keys``; from the command line:
    ``--image-size N`` or ``--resize-keys``. ``flag`` is the command line's name where it is not the keyword's
    (``option("n_keys", flag="-k")``); a ``True`` value names a switch (``--overwrite`` / ``overwrite=True``).
    """
    if os.environ.get(_CLI_ENV) == "cli":
        name = flag or "--" + keyword.replace("_", "-")
        return name if value is _UNSET or value is True else f"{name} {value}"
    return keyword if value is _UNSET else f"{keyword}={value}"


@contextmanager
def command_line_options() -> Iterator[None]:
    """Within this block (and in processes started from it), :func:`option` names command-line flags."""
    before = os.environ.get(_CLI_ENV)
    os.environ[_CLI_ENV] = "cli"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_CLI_ENV, None)
        else:
            os.environ[_CLI_ENV] = before
