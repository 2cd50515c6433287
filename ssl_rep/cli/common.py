"""What the command lines share: logging setup and turning known errors into one clear line."""
from __future__ import annotations

import logging
import sys
from contextlib import contextmanager


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@contextmanager
def friendly_errors(prog: str, *error_types):
    """Exit with status 2 and a one-line message (no traceback) for the expected error types."""
    try:
        yield
    except error_types as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
