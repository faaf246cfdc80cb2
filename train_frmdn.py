"""Stage 2: train M (the FRMDN) on the run's encoded latents; rerun to resume.

    python train_frmdn.py --config carracing --preset quick memory.precision=square
"""

from __future__ import annotations

import json

from agents.dream_check import train_memory_checked
from worldmodels.config import cli_parser, doc_summary, parse_cli
from worldmodels.errors import run_cli
from worldmodels.frmdn_training import report_dict
from worldmodels.run_dir import run_from_args


def main(argv: list[str] | None = None) -> dict:
    cfg, run = run_from_args(parse_cli(cli_parser(doc_summary(__doc__)), argv))
    summary = report_dict(train_memory_checked(cfg, run))
    print(json.dumps(summary, indent=2))
    if run.memory.model.exists():
        print(f"weights: {run.memory.model}")
    return summary



def cli() -> None:
    """The command ``worldmodels-train-frmdn``: main() through run_cli (one-line errors)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
