"""Score several runs' V on one run's held-out frames: per-pixel MSE of reconstructions
from mu, against that run's mean training frame, on the same frames for every V.

    python tools/score_vae.py --run runs/CarRacing-v3/solve --vae runs/CarRacing-v3/quick
    python tools/score_vae.py --run runs/CarRacing-v3/solve --vae A --vae B --frames 0

The first row is the run's own V; each ``--vae DIR`` adds a row (another run's V, which
must have the same frame size). ``--objects`` adds a second table: the share of object
pixels (those far from the mean frame) each V keeps, with frames binned by how many
object pixels they have (:class:`worldmodels.vae_training.ObjectTally`): the small
things, such as TakeCover's distant fireballs, that the frame MSE hides.

    python tools/score_vae.py --run RUN --vae pretrained/takecover --objects
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from worldmodels.config import ConfigError, command_parser
from worldmodels.errors import run_cli
from worldmodels.run_dir import RunDir
from worldmodels.vae_training import (
    OBJECT_DEVIATION,
    object_bin_label,
    read_mean_frame,
    rollout_split,
    score_holdout,
)


def _share(kept: float | None) -> str:
    return "-" if kept is None else f"{kept:.2f}"


def main(argv: list[str] | None = None) -> str:
    parser = command_parser(__doc__)
    parser.add_argument("--run", required=True, help="the run whose held-out frames are scored")
    parser.add_argument("--vae", action="append", default=[],
                        help="another run whose V is scored on them (repeatable)")
    parser.add_argument("--frames", type=int, default=5000,
                        help="held-out frames scored (0: all)")
    parser.add_argument("--objects", action="store_true",
                        help="also the share of object pixels kept, by object size")
    args = parser.parse_args(argv)
    if args.frames < 0:
        raise ConfigError(f"--frames must be >= 0 (0: all), got {args.frames}")
    run = RunDir(args.run)
    cfg = run.load_config()
    _, holdout, _ = rollout_split(cfg, run)
    mean = read_mean_frame(run.vae.mean, cfg.env.frame_size)
    lines = [f"held-out frames of {run.path} ({len(holdout)} episodes, "
             f"{args.frames or 'all'} frames)",
             "| V | held-out MSE | mean-frame MSE | ratio | frames | seconds |",
             "|---|---|---|---|---|---|"]
    sources = [run, *(RunDir(p) for p in args.vae)]
    recalls = []
    for source in sources:
        vae = source.load_vae(source.load_config().vae.z_dim)
        started = time.perf_counter()
        score = score_holdout(vae, holdout, mean, torch.device("cpu"), args.frames)
        mse, mean_mse = score.mse, score.mean_frame_mse
        lines.append(f"| {source.path} | {mse:.5f} | {mean_mse:.5f} | {mse / mean_mse:.3f} "
                     f"| {score.frames} | {time.perf_counter() - started:.0f} |")
        recalls.append(score.objects)
    if args.objects:
        bins = recalls[0]
        lines += ["", "object pixels kept (frames binned by object pixels; "
                  f"object: > {OBJECT_DEVIATION} from the mean frame)",
                  "| V | " + " | ".join(f"{object_bin_label(b)} px" for b in bins) + " |",
                  "|---|" + "---|" * len(bins),
                  "| frames | " + " | ".join(str(b["frames"]) for b in bins) + " |"]
        lines += [f"| {source.path} | " + " | ".join(_share(b["kept"]) for b in recall) + " |"
                  for source, recall in zip(sources, recalls, strict=True)]
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    run_cli(main)
