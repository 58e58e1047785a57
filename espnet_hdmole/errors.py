"""User errors: bad input a person can fix, reported as one line without a traceback.

Raise :class:`UserError` (or a subclass) for anything a user produced that is wrong: a config
key, a data file, a model directory, a checkpoint that does not belong to its config. The
message names the file, line or key and says what was expected. The command-line entry points
run through :func:`run_cli`, which prints such an error as ``ERROR: <message>`` on one line and
exits with status 1; with ``--verbose`` on the command line, or ``HDMOLE_VERBOSE=1`` in the
environment (``hdmole.sh --verbose true`` sets it), the traceback is shown as well.
"""
import os
import sys
import traceback
from typing import Callable, List, Optional, Sequence

VERBOSE_ENV = "HDMOLE_VERBOSE"


class UserError(ValueError):
    """Bad input that the user can fix; the message names the file, line or key."""


class UserFileError(UserError, FileNotFoundError):
    """A file or directory the user named is missing or unusable."""


def verbose_requested(argv: Optional[Sequence[str]] = None) -> bool:
    argv = list(sys.argv[1:] if argv is None else argv)
    flag = False
    for i, a in enumerate(argv):
        if a == "--verbose":  # "--verbose", "--verbose true"
            nxt = argv[i + 1] if i + 1 < len(argv) else ""
            flag = nxt.lower() not in ("false", "0", "no")
        elif a.startswith("--verbose="):
            flag = a.split("=", 1)[1].lower() in ("true", "1", "yes")
    return flag or os.environ.get(VERBOSE_ENV, "").lower() not in ("", "0", "false")


def run_cli(main: Callable[[Optional[List[str]]], object], argv: Optional[List[str]] = None) -> int:
    """Run ``main(argv)``; a UserError becomes one ``ERROR:`` line and exit status 1."""
    try:
        rv = main(argv)
    except UserError as e:
        if verbose_requested(argv):
            traceback.print_exc()
        msg = " ".join(str(e).split("\n")) if not verbose_requested(argv) else str(e)
        print(f"ERROR: {msg}", file=sys.stderr, flush=True)
        return 1
    return rv if isinstance(rv, int) else 0
