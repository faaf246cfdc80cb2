"""Run independent tasks on one of three engines: serial, local processes, or Ray.

A :class:`TaskPool` keeps its worker processes between calls, so a worker that loaded
V and M for one generation keeps them for the next. Task functions must be importable
top-level functions (they are sent to other processes by reference).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, TypeVar

from worldmodels.errors import InputError, MissingPackageError

T = TypeVar("T")


class TaskError(RuntimeError):
    """A task raised in a worker; the message names the task and carries its traceback."""


def resolve_workers(workers: int) -> int:
    return workers if workers > 0 else (os.cpu_count() or 1)


def _call(fn: Callable[..., T], task: Any) -> T:
    try:
        return fn(task)
    except (InputError, KeyboardInterrupt, SystemExit):  # bad input says what to fix;
        raise  # Ctrl-C and SIGTERM (Stopped) stop the job, in a serial task as in a worker
    except BaseException as err:  # a bug: keep the worker's traceback in the message
        raise TaskError(f"task {task!r} failed:\n{traceback.format_exc()}") from err


def descendants(pids: Sequence[int]) -> list[int]:
    """Every living process below ``pids``: children, their children, ... (one read of
    Linux's /proc; elsewhere an empty list)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we read
            continue
        ppid = int(text[text.rfind(")") + 2:].split()[1])  # (the name may hold spaces)
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, stack = [], list(pids)
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _exit_with_parent(poll_seconds: float = 0.5) -> None:
    """A worker's initializer: a daemon thread ends the worker, and the processes it
    started (a VizDoom game), once its parent is gone. A ``kill -9`` of the main
    process, or the OOM killer, gives its workers no signal; without this they would
    play out their tasks and then wait, holding V, M and an env, for ever. The parent is
    the one the worker starts with (an interpreter launcher that forks may stand
    between the pool and its workers)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        for pid in descendants([os.getpid()]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def ray_module() -> Any:
    try:
        import ray
    except ImportError as err:
        raise MissingPackageError(
            "engine=ray needs the package 'ray': pip install 'worldmodels[ray]'"
        ) from err
    return ray


class TaskPool:
    """Workers that outlive one batch of tasks.

    ``engine``: ``serial`` (in this process), ``process`` (spawned processes; ``workers``
    0 = one per core) or ``ray`` (needs the ``ray`` extra; ``ray_address`` '' starts a
    local Ray). The first failing task stops the batch and raises :class:`TaskError`
    naming it; results already yielded stay valid. A batch given up before its end (a
    failed task, Ctrl-C, SIGTERM through :func:`worldmodels.errors.run_cli`, a caller that
    stops reading) stops the worker processes still running its tasks at once; the next
    batch starts new ones. A worker whose main process dies (even by ``kill -9``) ends
    itself and its children within a second (:func:`_exit_with_parent`).
    """

    def __init__(self, engine: str = "process", workers: int = 0, ray_address: str = ""):
        if engine not in ("serial", "process", "ray"):
            raise ValueError(f"unknown engine '{engine}' (serial, process, ray)")
        self.engine, self.workers, self.ray_address = engine, resolve_workers(workers), ray_address
        if engine == "process" and self.workers == 1:
            self.engine = "serial"
        self._pool: ProcessPoolExecutor | None = None
        self._ray: Any = None

    def run(self, fn: Callable[[Any], T], tasks: Sequence[Any]) -> Iterator[tuple[Any, T]]:
        """Yield ``(task, fn(task))`` in completion order."""
        if self.engine == "serial":
            for task in tasks:
                yield task, _call(fn, task)
        elif self.engine == "process":
            yield from self._run_processes(fn, tasks)
        else:
            yield from self._run_ray(fn, tasks)

    def _run_processes(self, fn: Callable[[Any], T], tasks: Sequence[Any]):
        if self._pool is None:
            # spawn, not fork: workers must not inherit torch's threads or an open env
            self._pool = ProcessPoolExecutor(max_workers=self.workers,
                                             mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_exit_with_parent)
        pending: dict = {}
        queue = list(reversed(tasks))
        try:
            # at most 2 tasks per worker in flight, so a failure stops the batch early
            while queue or pending:
                while queue and len(pending) < 2 * self.workers:
                    task = queue.pop()
                    pending[self._pool.submit(_call, fn, task)] = task
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    task = pending.pop(future)
                    yield task, future.result()
        except BaseException:
            self._stop_workers()  # their tasks' results are no longer wanted
            raise

    def _run_ray(self, fn: Callable[[Any], T], tasks: Sequence[Any]):
        ray = ray_module()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = ({"address": self.ray_address} if self.ray_address
                                      else {"num_cpus": self.workers})
            ray.init(include_dashboard=False, log_to_driver=False, **kwargs)
        if self._ray is None:
            self._ray = ray.remote(_call)  # Ray reuses its worker processes between calls
        refs = {self._ray.remote(fn, task): task for task in tasks}
        try:
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                for ref in done:
                    task = refs.pop(ref)
                    yield task, ray.get(ref)
        except BaseException:
            for ref in refs:  # a given-up batch: stop its tasks (force: mid-task)
                ray.cancel(ref, force=True)
            raise

    def _stop_workers(self) -> None:
        """Terminate the worker processes now, mid-task (``ProcessPoolExecutor``'s own
        shutdown waits for running tasks, e.g. a whole episode)."""
        if self._pool is None:
            return
        # the executor's process table (terminate_workers() only exists from Python 3.14)
        processes = list((getattr(self._pool, "_processes", None) or {}).values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        alive = [proc for proc in processes if proc.is_alive()]
        # the workers' own children go first and for good: a VizDoom game ignores SIGTERM,
        # and, holding its worker's inherited pipes, would keep the executor (and so this
        # process's exit) waiting for that worker forever
        for pid in descendants([proc.pid for proc in alive]):
            with contextlib.suppress(ProcessLookupError):  # (ended meanwhile)
                os.kill(pid, signal.SIGKILL)
        for proc in alive:
            proc.terminate()
        for proc in processes:
            proc.join(timeout=10)
        self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self) -> TaskPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_tasks(fn: Callable[[Any], T], tasks: Sequence[Any], engine: str = "process",
              workers: int = 0, ray_address: str = "") -> Iterator[tuple[Any, T]]:
    """One batch of tasks on a pool that is closed afterwards (see :class:`TaskPool`)."""
    with TaskPool(engine, workers, ray_address) as pool:
        yield from pool.run(fn, tasks)
