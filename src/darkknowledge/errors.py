"""The one exception type users see: bad input, named plainly, no traceback."""

import threading


class DKError(Exception):
    """Bad input or state that the user can fix; the CLI prints it as one line and exits 2."""


class Diverged(DKError):
    """A training run's loss stopped being finite: a setting that does not train, which a search may skip."""


# Set by the `dk` command's Ctrl-C (SIGINT) handler. Python prints and drops a KeyboardInterrupt raised
# while it runs a finaliser (``__del__``, a weakref callback), so a training loop also checks this at each
# epoch boundary: an interrupt always stops the run, with its completed epochs checkpointed.
INTERRUPTED = threading.Event()
