import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


_STUBBORN_CHILD = ("import signal, time; "
                   "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)")


def report_and_sleep(path: str) -> None:
    """Start a child that, like a VizDoom game, ignores SIGTERM and inherits this worker's
    file descriptors; write both pids to ``path``; sleep far longer than any test waits."""
    child = subprocess.Popen([sys.executable, "-c", _STUBBORN_CHILD], close_fds=False)
    Path(path).write_text(f"{os.getpid()} {child.pid}")
    time.sleep(120)


_SLEEPING_ENTRY_POINT = """
from agents.parallel import TaskPool
from tests.test_parallel import report_and_sleep
from worldmodels.errors import run_cli

def main(argv):
    with TaskPool("process", workers=2) as pool:
        list(pool.run(report_and_sleep, [argv[0] + "/a", argv[0] + "/b"]))

run_cli(main)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_sigterm_stops_the_entry_point_and_its_workers_mid_task(tmp_path):
    root = Path(__file__).resolve().parents[1]
    # a session of its own, so that a failing run is cleaned up whole (workers included)
    proc = subprocess.Popen([sys.executable, "-c", _SLEEPING_ENTRY_POINT, str(tmp_path)],
                            cwd=root, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        pid_files = [tmp_path / "a", tmp_path / "b"]
        assert _wait_for(lambda: all(f.exists() and f.read_text() for f in pid_files), 60)
        workers = [int(pid) for f in pid_files for pid in f.read_text().split()]
        assert all(_alive(pid) for pid in workers)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    # one line and 128 + 15, not a traceback or death by the signal (-15)
    assert proc.returncode == 143, stderr
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    # the workers were 2 minutes from the end of their tasks: they were stopped, not
    # awaited, and so were the children they started
    assert _wait_for(lambda: not any(_alive(pid) for pid in workers), 10)


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's new parent may be slow to reap it)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return _alive(pid) if not Path("/proc").is_dir() else False
    return text[text.rfind(")") + 2] != "Z"


def test_workers_end_when_their_main_process_is_killed(tmp_path):
    """kill -9 of the main process gives its workers no signal: they notice the loss of
    their parent and end, with the children they started."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", _SLEEPING_ENTRY_POINT, str(tmp_path)],
                            cwd=root, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        pid_files = [tmp_path / "a", tmp_path / "b"]
        assert _wait_for(lambda: all(f.exists() and f.read_text() for f in pid_files), 60)
        workers = [int(pid) for f in pid_files for pid in f.read_text().split()]
        assert all(_running(pid) for pid in workers)
        proc.kill()
        proc.wait(timeout=30)
        assert _wait_for(lambda: not any(_running(pid) for pid in workers), 10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_pool_runs_new_batches_after_one_was_given_up():
    with TaskPool("process", workers=2) as pool:
        with pytest.raises(TaskError):
            list(pool.run(fails_on_three, [1, 2, 3, 4]))
        assert sorted(result for _, result in pool.run(fails_on_three, [5, 6])) == [5, 6]


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


def interrupted(task: int) -> int:
    from worldmodels.errors import Stopped

    raise Stopped(signal.SIGTERM) if task == 2 else KeyboardInterrupt


def test_a_stop_in_a_serial_task_stops_the_job_rather_than_failing_the_task():
    """One worker runs tasks in the main process (the serial engine): Ctrl-C and SIGTERM
    reach the task there, and must stop the job as they do with worker processes."""
    from worldmodels.errors import Stopped

    with pytest.raises(Stopped):
        list(run_tasks(interrupted, [2], engine="serial", workers=1))
    with pytest.raises(KeyboardInterrupt):
        list(run_tasks(interrupted, [1], engine="serial", workers=1))
