"""What the command-line scripts share: an expected error becomes one clear line and exit code 2."""

from __future__ import annotations

import os
import sys
from typing import Callable, NoReturn

from deploy.cost import CostUnavailable
from deploy.db import DatabaseError

USER_ERRORS = (ValueError, DatabaseError, OSError, CostUnavailable)
"""Errors caused by the input (arguments, files, budgets, a board that cannot be reached): reported
without a traceback."""


def run_main(main: Callable[[], int]) -> NoReturn:
    """Exit with `main()`'s code; an error in `USER_ERRORS` prints `error: <message>` and exits 2, Ctrl-C
    prints one line and exits 130 (no traceback), a closed output pipe exits 141 (as a shell's SIGPIPE) quietly."""
    try:
        sys.exit(main())
    except BrokenPipeError:  # the reader went away (`| head`): nothing to say, and nothing more to print
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
