"""Stage 1b: encode every rollout shard with V into <run>/latents/ for M.

    python encode.py --config carracing --preset quick
"""

from __future__ import annotations

from worldmodels.config import cli_parser, doc_summary, parse_cli
from worldmodels.encoding import encode_rollouts
from worldmodels.errors import run_cli
from worldmodels.run_dir import run_from_args


def main(argv: list[str] | None = None) -> None:
    cfg, run = run_from_args(parse_cli(cli_parser(doc_summary(__doc__)), argv))
    report = encode_rollouts(cfg, run)
    print(f"{run.latents}: {report.episodes} episodes, {report.encoded} encoded now "
          f"({report.frames} frames in {report.seconds:.1f}s)")



def cli() -> None:
    """The command ``worldmodels-encode``: main() through run_cli (one-line errors)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
