"""Run independent tasks on one of three engines: serial, local processes, or Ray.

Collection uses it now; controller evaluation can share it. Task functions must be
importable top-level functions (they are sent to other processes by reference).
"""

from __future__ import annotations

import multiprocessing
import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, TypeVar

from envs.factory import MissingPackageError

T = TypeVar("T")


class TaskError(RuntimeError):
    """A task raised in a worker; the message names the task and carries its traceback."""


def resolve_workers(workers: int) -> int:
    return workers if workers > 0 else (os.cpu_count() or 1)


def _call(fn: Callable[..., T], task: Any) -> T:
    try:
        return fn(task)
    except BaseException as err:  # keep the worker's traceback in the message
        raise TaskError(f"task {task!r} failed:\n{traceback.format_exc()}") from err


def run_tasks(
    fn: Callable[[Any], T],
    tasks: Sequence[Any],
    engine: str = "process",
    workers: int = 0,
    ray_address: str = "",
) -> Iterator[tuple[Any, T]]:
    """Yield ``(task, fn(task))`` in completion order.

    ``engine``: ``serial`` (in this process), ``process`` (a spawned process pool with
    ``workers`` processes; 0 = one per core) or ``ray`` (needs the ``ray`` extra;
    ``ray_address`` '' starts a local Ray). The first failing task stops the run and
    raises :class:`TaskError` naming it; results already yielded stay valid.
    """
    if engine == "serial" or (engine == "process" and resolve_workers(workers) == 1):
        for task in tasks:
            yield task, _call(fn, task)
    elif engine == "process":
        yield from _run_processes(fn, tasks, resolve_workers(workers))
    elif engine == "ray":
        yield from _run_ray(fn, tasks, workers, ray_address)
    else:
        raise ValueError(f"unknown engine '{engine}' (serial, process, ray)")


def _run_processes(fn: Callable[[Any], T], tasks: Sequence[Any], workers: int):
    # spawn, not fork: workers must not inherit torch's threads or an open env
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        pending = {}
        queue = list(tasks)
        queue.reverse()
        try:
            # keep at most 2 tasks per worker in flight so a failure stops early
            while queue or pending:
                while queue and len(pending) < 2 * workers:
                    task = queue.pop()
                    pending[pool.submit(_call, fn, task)] = task
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    task = pending.pop(future)
                    yield task, future.result()
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def ray_module() -> Any:
    try:
        import ray
    except ImportError as err:
        raise MissingPackageError(
            "engine=ray needs the package 'ray': pip install 'worldmodels[ray]'"
        ) from err
    return ray


def _run_ray(fn: Callable[[Any], T], tasks: Sequence[Any], workers: int, address: str):
    ray = ray_module()
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"address": address} if address else {
            "num_cpus": resolve_workers(workers)}
        ray.init(include_dashboard=False, log_to_driver=False, **kwargs)
    remote = ray.remote(_call)
    refs = {remote.remote(fn, task): task for task in tasks}
    while refs:
        done, _ = ray.wait(list(refs), num_returns=1)
        for ref in done:
            task = refs.pop(ref)
            yield task, ray.get(ref)
