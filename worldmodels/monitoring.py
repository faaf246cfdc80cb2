"""What a long loop reports besides its results: TensorBoard logs and peak memory."""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any


def summary_writer(log_dir: Path) -> Any:
    """A TensorBoard ``SummaryWriter`` under ``log_dir``."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir))


def peak_rss_mib() -> float:
    """Peak resident memory of this process and its finished children, in MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    bytes_per_unit = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB
    return max(own, kids) * bytes_per_unit / 2**20
