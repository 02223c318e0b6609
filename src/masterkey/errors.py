"""The one exception type users see."""


class MasterkeyError(Exception):
    """Bad input or an impossible request.

    The message is one line that names the file or argument and says what was expected; the CLI prints it as
    ``masterkey: error: <message>`` and exits with status 2.
    """
