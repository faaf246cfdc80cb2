"""What a long loop reports besides its results: TensorBoard logs and peak memory."""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any


def summary_writer(log_dir: Path, resumed_at: int = 0) -> Any:
    """A TensorBoard ``SummaryWriter`` under ``log_dir``. ``resumed_at`` > 0: the last
    step a finished unit of training (an epoch, a generation) logged; what a killed job
    logged after it is hidden (``purge_step``), so that a resumed curve does not run
    twice over the same steps."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir),
                         purge_step=resumed_at + 1 if resumed_at > 0 else None)


def peak_rss_mib() -> float:
    """Peak resident memory of this process and its finished children, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    bytes_per_unit = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB
    return max(own, kids) * bytes_per_unit / 2**20
