"""Is it a round's new data or its extra epochs that changed M's dream? M of a round of
iterative training trained on: its own M, ``--epochs`` more epochs on the run's training
episodes with an index below ``--below`` (say the rounds before the next one's data),
then the held-action check that run.py runs before C (``agents/dream_check.py``).

    python tools/m_data_control.py --run RUN --round 2 --epochs 2 --below 4600 --out DIR
    python tools/m_data_control.py --run RUN --round 2 --epochs 2 --below 0 --out DIR2

``--below 0`` takes every episode, as the next round's M did (there from the round's
optimizer state; here Adam starts afresh in both, so the two compare with each other).
The run is only read: M, its figures and the check go to ``--out`` (a
:class:`worldmodels.run_dir.RunView` of the run whose M is trained there). A rerun
resumes M from its last epoch and reuses the check when M has not changed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.dream_check import check_run, train_memory_checked
from worldmodels.atomic import write_bytes_atomic
from worldmodels.checkpoint import read_header, sidecar
from worldmodels.config import ConfigError, command_parser
from worldmodels.errors import run_cli
from worldmodels.frmdn_training import report_dict
from worldmodels.run_dir import RunDir, RunView


def main(argv: list[str] | None = None) -> dict:
    parser = command_parser(__doc__)
    parser.add_argument("--run", type=Path, required=True, help="a run of iterative training")
    parser.add_argument("--round", type=int, required=True, help="the round whose M starts")
    parser.add_argument("--epochs", type=int, required=True, help="more epochs (>= 1)")
    parser.add_argument("--below", type=int, required=True,
                        help="train on episodes with an index below this (0: all)")
    parser.add_argument("--out", type=Path, required=True, help="where M and the check go")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.below < 0:
        raise ConfigError("--epochs must be >= 1 and --below >= 0")
    run = RunDir(args.run)
    start = run.round(args.round).memory.best
    if not start.exists():
        raise ConfigError(f"{start}: round {args.round} of {run.path} kept no M")
    cfg = run.load_config()
    view = RunView(run, args.out, args.out / "memory")
    if not view.memory.model.exists():  # M starts as the round left it (fresh Adam)
        write_bytes_atomic(view.memory.model, start.read_bytes())
        if sidecar(start).exists():
            write_bytes_atomic(sidecar(view.memory.model), sidecar(start).read_bytes())
    epoch = int(read_header(start)["meta"]["epoch"])
    report = train_memory_checked(cfg, view, epochs=epoch + args.epochs, select_after=epoch,
                                  episodes_below=args.below)
    result = {"memory": report_dict(report), "check": check_run(cfg, view),
              "start": str(start), "below": args.below}
    print(json.dumps({"holdout_nll": result["memory"]["holdout_nll"],
                      "best_epoch": result["memory"]["best_epoch"],
                      "worst_action": result["check"].get("worst_action"),
                      "worst_ratio": result["check"].get("worst_ratio")}))
    return result


if __name__ == "__main__":
    run_cli(main)
