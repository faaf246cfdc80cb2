"""Errors caused by the user's input (a config key, a file, a missing package), as opposed
to bugs. Entry points print these as one line and exit with status 2; anything else
keeps its traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class InputError(Exception):
    """Bad input: the message names the file or key and says what to do."""


def run_cli(main: Callable[[list[str]], Any], argv: list[str] | None = None) -> None:
    """Run an entry point; an :class:`InputError` becomes ``error: <message>``, exit 2."""
    try:
        main(sys.argv[1:] if argv is None else argv)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
