"""Stage 0: roll out a data policy and write one shard per episode to <run>/rollouts/.

    python collect.py --config carracing --preset quick collect.workers=2
"""

from __future__ import annotations

from agents.collect import collect
from worldmodels.config import cli_parser, doc_summary, parse_cli
from worldmodels.errors import run_cli
from worldmodels.run_dir import run_from_args


def main(argv: list[str] | None = None) -> None:
    cfg, run = run_from_args(parse_cli(cli_parser(doc_summary(__doc__)), argv))
    report = collect(cfg, run)
    print(f"{run.rollouts}: {report.episodes_total} episodes "
          f"({report.episodes_new} new, {report.steps_new} steps, "
          f"{report.steps_per_second:.0f} steps/s)")



def cli() -> None:
    """The command ``worldmodels-collect``: main() through run_cli (one-line errors)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
