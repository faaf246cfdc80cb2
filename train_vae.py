"""Stage 1: train V (the ConvVAE) on the run's rollout shards; rerun to resume.

    python train_vae.py --config carracing --preset quick
"""

from __future__ import annotations

import json

from worldmodels.config import cli_parser, doc_summary, parse_cli
from worldmodels.errors import run_cli
from worldmodels.run_dir import run_from_args
from worldmodels.vae_training import report_dict, train_vae


def main(argv: list[str] | None = None) -> dict:
    cfg, run = run_from_args(parse_cli(cli_parser(doc_summary(__doc__)), argv))
    report = train_vae(cfg, run)
    summary = report_dict(report)
    print(json.dumps(summary, indent=2))
    files = {"weights": run.vae.model, "grid": run.vae.grid}
    print("  ".join(f"{name}: {path}" for name, path in files.items() if path.exists()))
    return summary



def cli() -> None:
    """The command ``worldmodels-train-vae``: main() through run_cli (one-line errors)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
