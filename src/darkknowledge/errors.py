"""The one exception type users see: bad input, named plainly, no traceback."""


class DKError(Exception):
    """Bad input or state that the user can fix; the CLI prints it as one line and exits 2."""
