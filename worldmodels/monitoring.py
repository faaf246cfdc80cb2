"""What a long loop reports besides its results: TensorBoard logs and peak memory."""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any


def summary_writer(log_dir: Path, resumed_at: int = 0) -> LazySummaryWriter:
    """A TensorBoard ``SummaryWriter`` under ``log_dir``, whose event file is opened on
    the first value logged: a stage that finds its work done (a rerun, a skipped stage
    of ``run.py``) leaves no empty event file behind. ``resumed_at`` > 0: the last step
    a finished unit of training (an epoch, a generation) logged; what a killed job
    logged after it is hidden (``purge_step``), so that a resumed curve does not run
    twice over the same steps."""
    return LazySummaryWriter(log_dir, purge_step=resumed_at + 1 if resumed_at > 0 else None)


class LazySummaryWriter:
    """A ``SummaryWriter`` made on first use. TensorBoard is imported at once, so a
    missing package stops a command before it trains, not at its first log line."""

    def __init__(self, log_dir: Path, purge_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        self._make = lambda: SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
        self._writer: Any = None

    def __getattr__(self, name: str) -> Any:  # add_scalar, add_image, ...
        if self._writer is None:
            self._writer = self._make()
        return getattr(self._writer, name)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def peak_rss_mib() -> float:
    """Peak resident memory of this process and its finished children, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    bytes_per_unit = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB
    return max(own, kids) * bytes_per_unit / 2**20
