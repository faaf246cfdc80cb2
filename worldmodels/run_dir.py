"""The run directory: one per experiment, holding every stage's output and the config."""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any

import yaml

from worldmodels.config import ExperimentConfig, save_config, to_dict


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def prepare_run_dir(cfg: ExperimentConfig) -> Path:
    """Create ``cfg.run_dir`` and write the resolved ``config.yaml`` at its root.

    If a config is already there and differs, the changed keys are printed (a rerun
    with, say, more epochs is a normal way to continue a run) and the old file is kept
    as ``config.prev.yaml``.
    """
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    if path.exists():
        old = yaml.safe_load(path.read_text()) or {}
        new, before = _flatten(to_dict(cfg)), _flatten(old)
        changed = sorted(k for k in set(new) | set(before) if new.get(k) != before.get(k))
        if changed:
            print(f"{path}: config changed since the last run: "
                  + ", ".join(f"{k}: {before.get(k)!r} -> {new.get(k)!r}" for k in changed),
                  file=sys.stderr)
            (run_dir / "config.prev.yaml").write_text(path.read_text())
    save_config(cfg, path)
    return run_dir


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
