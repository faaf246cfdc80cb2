"""Errors caused by the user's input (a config key, a file, a missing package), as opposed
to bugs. Entry points print these as one line and exit with status 2; anything else
keeps its traceback. A stop (Ctrl-C, or SIGTERM from ``kill`` or a job scheduler) is one
line too, exit status 128 + the signal's number.

An ``OSError`` is the OS saying no. Writes go through :mod:`worldmodels.atomic`, which
turns a refused write into an :class:`InputError` naming the file; what escapes
elsewhere is handled here by its errno: :data:`OS_REFUSALS` (disk full, quota,
read-only file system, no permission) are conditions of the machine, not of the code,
so with a file name they become one line ``error: <path>: <reason>``, exit status 2.
Every other ``OSError`` (no such file, not a directory, ...) keeps its traceback: the
entry points check the paths a user gives (run directory, config, ``root``), so one of
those reaching here more likely means a path the code got wrong, a bug.

A package worldmodels depends on (pyproject.toml's ``dependencies``) that cannot be
imported is an install left incomplete (``pip install --no-deps``, a package removed
since): one line naming it and how to reinstall, exit status 2. The optional packages
(vizdoom, ale-py, ray) are named where an env or engine asks for them
(:class:`MissingPackageError`)."""

from __future__ import annotations

import errno
import signal
import sys
from collections.abc import Callable
from typing import Any

#: errno values of an OSError that mean the OS refused, not that the code is wrong
OS_REFUSALS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})

#: the import name of each package in pyproject.toml's ``dependencies`` -> its pip name
#: (tests/test_bad_input.py keeps the two lists the same)
DEPENDENCY_MODULES = {
    "torch": "torch", "gymnasium": "gymnasium[box2d]", "Box2D": "gymnasium[box2d]",
    "stable_baselines3": "stable-baselines3", "cv2": "opencv-python-headless",
    "numpy": "numpy", "cma": "cma", "tqdm": "tqdm", "tensorboard": "tensorboard",
    "yaml": "pyyaml", "safetensors": "safetensors", "imageio": "imageio",
    "matplotlib": "matplotlib", "zuko": "zuko",
}


def one_line(message: object) -> str:
    """A message as one line: its lines joined by '; '."""
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip())


class InputError(Exception):
    """Bad input: the message names the file or key and says what to do."""


class MissingPackageError(InputError, ImportError):
    """An optional package an env or engine needs is not installed."""


class Stopped(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that the same cleanup runs:
    open files are left whole (every write is atomic) and worker processes are stopped
    (see :class:`agents.parallel.TaskPool`)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, _frame: object) -> None:
    raise Stopped(signum)


#: called when run_cli refuses a command, before its error line (see :func:`on_refusal`)
_REFUSAL_HOOKS: list[Callable[[], None]] = []
#: how many commands run_cli has started in this process
_COMMANDS = [0]


def current_command() -> int:
    """The number of the run_cli command this process is running (0 before any): what a
    refusal hook may undo is what the refused command itself did."""
    return _COMMANDS[0]


def on_refusal(hook: Callable[[], None]) -> None:
    """Call ``hook()`` when :func:`run_cli` refuses a command (exit status 2), e.g. to put
    back a config the command wrote before its inputs were found bad
    (:func:`worldmodels.run_dir.undo_refused_config`). A hook that fails is skipped."""
    if hook not in _REFUSAL_HOOKS:
        _REFUSAL_HOOKS.append(hook)


def _refused(message: str) -> SystemExit:
    for hook in _REFUSAL_HOOKS:
        try:
            hook()
        except Exception as err:  # the refusal's own message matters more
            print(f"(while undoing: {one_line(err)})", file=sys.stderr)
    print(f"error: {message}", file=sys.stderr)
    return SystemExit(2)


def run_cli(main: Callable[[list[str]], Any], argv: list[str] | None = None) -> None:
    """Run an entry point; an :class:`InputError` becomes ``error: <message>`` (one
    line), exit 2, and so does an ``OSError`` of :data:`OS_REFUSALS` naming a file and a
    dependency that cannot be imported (:data:`DEPENDENCY_MODULES`).
    A refused command first runs the :func:`on_refusal` hooks.

    SIGTERM stops it as Ctrl-C does; either prints one line and exits with 128 + the
    signal's number (SIGINT 130, SIGTERM 143), keeping what was written.
    """
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    _COMMANDS[0] += 1
    try:
        main(sys.argv[1:] if argv is None else argv)
    except InputError as err:
        raise _refused(one_line(err)) from None
    except ModuleNotFoundError as err:
        top = (err.name or "").partition(".")[0]
        if err.name != top or top not in DEPENDENCY_MODULES:
            raise  # (a submodule missing from an installed package: more likely a bug)
        raise _refused(f"the package '{DEPENDENCY_MODULES[top]}' (imported as '{top}'), "
                       "which worldmodels depends on, is not installed: reinstall "
                       "worldmodels with its dependencies (pip install -e . in a "
                       "checkout, or pip install .)") from None
    except OSError as err:
        if err.errno not in OS_REFUSALS or not err.filename:
            raise  # see the module docstring: more likely a bug
        raise _refused(f"{err.filename}: {(err.strerror or str(err)).lower()}") from None
    except KeyboardInterrupt as err:
        signum = err.signum if isinstance(err, Stopped) else int(signal.SIGINT)
        print(f"stopped by {signal.Signals(signum).name}: files already written are kept; "
              "the same command resumes a training stage from its last checkpoint",
              file=sys.stderr)
        raise SystemExit(128 + signum) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
