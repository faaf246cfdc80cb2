import os

import pytest

from agents.parallel import TaskError, TaskPool, run_tasks

_CALLS = {"n": 0}


def count_calls(task: int) -> tuple[int, int]:
    """(pid, calls so far in this process): shows whether a worker was reused."""
    _CALLS["n"] += 1
    return os.getpid(), _CALLS["n"]


def fails_on_three(task: int) -> int:
    if task == 3:
        raise ValueError("three is bad")
    return task


def test_pool_keeps_its_workers_between_batches():
    with TaskPool("process", workers=2) as pool:
        first = dict(pool.run(count_calls, list(range(6))))
        second = dict(pool.run(count_calls, list(range(6))))
    # (the executor starts workers on demand, so the two batches may not use the same set)
    before = {pid: n for pid, n in first.values()}
    shared = {pid for pid, _ in second.values()} & set(before)
    assert shared and os.getpid() not in before
    # a process that served the first batch keeps counting in the second: whatever it
    # loaded (V, M, the env) is still loaded
    for pid, n in second.values():
        if pid in shared:
            assert n > max(m for p, m in first.values() if p == pid)


def test_failing_task_is_named():
    for engine in ("serial", "process"):
        with pytest.raises(TaskError, match="task 3 failed"):
            list(run_tasks(fails_on_three, [1, 2, 3, 4], engine=engine, workers=2))
