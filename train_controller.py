"""Stage 3: train C with CMA-ES in the real env, on [z, h] from the run's V and M.

    python train_controller.py --config carracing --preset quick
    python train_controller.py controller.engine=ray controller.ray_address=HOST:6379

A rerun resumes from controller/cmaes_history.npz.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from agents.cmaes import train_cmaes
from worldmodels.config import cli_parser, config_from_args
from worldmodels.run_dir import prepare_run_dir


def main(argv: list[str] | None = None) -> dict:
    cfg = config_from_args(cli_parser(__doc__.splitlines()[0]).parse_args(argv))
    run_dir = prepare_run_dir(cfg)
    summary = asdict(train_cmaes(cfg))
    print(json.dumps(summary, indent=2))
    print(f"best controller: {run_dir / 'controller' / 'best.safetensors'}")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
