"""The main job: every stage of the pipeline for one config, each skipped or resumed
when its output already exists, then a summary (wall time and figures per stage).

    python run.py --preset quick                       # CarRacing, a few minutes on 2 cores
    python run.py --config doom_takecover --preset quick

Stages: collect -> train V -> encode -> train M -> train C (CMA-ES) -> evaluate C and a
random policy on ``controller.eval_episodes`` real episodes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from agents.cmaes import train_cmaes
from agents.collect import collect, describe
from agents.evaluation import evaluate
from worldmodels.config import ExperimentConfig, cli_parser, config_from_args, parse_cli
from worldmodels.encoding import encode_rollouts
from worldmodels.errors import run_cli
from worldmodels.frmdn_training import report_dict as memory_report
from worldmodels.frmdn_training import train_memory
from worldmodels.run_dir import prepare_run_dir
from worldmodels.vae_training import report_dict, train_vae


def stages() -> list[tuple[str, Callable[[ExperimentConfig], Any]]]:
    return [
        ("collect", lambda cfg: describe(collect(cfg))),
        ("vae", lambda cfg: report_dict(train_vae(cfg))),
        ("encode", lambda cfg: vars(encode_rollouts(cfg))),
        ("memory", lambda cfg: memory_report(train_memory(cfg))),
        ("controller", lambda cfg: asdict(train_cmaes(cfg))),
        ("evaluate", lambda cfg: evaluate(cfg.run_dir, cfg.controller.eval_episodes,
                                          seed=cfg.seed, engine=cfg.controller.engine,
                                          workers=cfg.controller.workers)),
        ("evaluate_random", lambda cfg: evaluate(cfg.run_dir, cfg.controller.eval_episodes,
                                                 policy="random", seed=cfg.seed,
                                                 engine=cfg.controller.engine,
                                                 workers=cfg.controller.workers)),
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = config_from_args(parse_cli(cli_parser(__doc__.splitlines()[0]), argv))
    run_dir = prepare_run_dir(cfg)
    summary: dict[str, Any] = {"run_dir": str(run_dir)}
    for name, stage in stages():
        start = time.perf_counter()
        result = stage(cfg)
        summary[name] = {"wall_seconds": round(time.perf_counter() - start, 1), **result}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    run_cli(main)
