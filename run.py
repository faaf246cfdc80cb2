"""The main job: every stage of the pipeline for one config, each skipped or resumed
when its output already exists, then a summary (wall time and figures per stage).

    python run.py --preset quick                       # CarRacing, a few minutes on 2 cores
    python run.py --config doom_takecover --preset quick
    python run.py --config doom_takecover --preset dream   # C trained in M's dream

Stages: collect -> train V -> encode -> train M -> check M's dream (for C trained in
it: held actions, dream against real; ``dream.max_held_ratio`` can stop the job here)
-> train C (CMA-ES, in the real env or in the dream: ``controller.environment``) ->
evaluate C and a random policy on ``controller.eval_episodes`` real episodes.
Evaluations are kept in ``eval/`` and redone only when the controller's weights or the
episodes change.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from agents.cmaes import train_cmaes
from agents.collect import collect, describe
from agents.dream_check import check_run
from agents.evaluation import evaluate
from worldmodels.checkpoint import file_digest, read_json
from worldmodels.config import ExperimentConfig, cli_parser, config_from_args, parse_cli
from worldmodels.encoding import encode_rollouts
from worldmodels.errors import run_cli
from worldmodels.frmdn_training import report_dict as memory_report
from worldmodels.frmdn_training import train_memory
from worldmodels.run_dir import prepare_run_dir
from worldmodels.vae_training import report_dict, train_vae


def evaluate_once(cfg: ExperimentConfig, policy: str) -> dict[str, Any]:
    """``evaluate`` unless ``eval/<policy>.json`` already scores these weights on these
    episodes."""
    c = cfg.controller
    weights = cfg.run_dir / "controller" / "best.safetensors"
    key = {"episodes": c.eval_episodes, "seed": cfg.seed,
           "weights": file_digest(weights) if policy == "controller" else None}
    cached = read_json(cfg.run_dir / "eval" / f"{policy}.json", {})
    if cached.get("key") == key:
        return {**cached, "cached": True}
    return evaluate(cfg.run_dir, c.eval_episodes, policy=policy, seed=cfg.seed,
                    engine=c.engine, workers=c.workers, key=key)


def stages() -> list[tuple[str, Callable[[ExperimentConfig], Any]]]:
    return [
        ("collect", lambda cfg: describe(collect(cfg))),
        ("vae", lambda cfg: report_dict(train_vae(cfg))),
        ("encode", lambda cfg: vars(encode_rollouts(cfg))),
        ("memory", lambda cfg: memory_report(train_memory(cfg))),
        ("dream_check", check_run),
        ("controller", lambda cfg: {**asdict(train_cmaes(cfg)),
                                    "environment": cfg.controller.environment}),
        ("evaluate", lambda cfg: evaluate_once(cfg, "controller")),
        ("evaluate_random", lambda cfg: evaluate_once(cfg, "random")),
    ]


def summary_table(summary: dict[str, Any]) -> str:
    """One line per stage: wall time and its headline figure."""
    def headline(name: str, s: dict[str, Any]) -> str:
        if name == "collect":
            return f"{s['episodes_total']} episodes ({s['episodes_new']} new)"
        if name == "vae":
            return f"held-out MSE {s['holdout_mse']:.5f} = {s['mse_ratio']:.3f} x mean frame's"
        if name == "encode":
            return f"{s['encoded']} of {s['episodes']} episodes encoded"
        if name == "memory":
            skill = s.get("holdout_done_skill", float("nan"))
            return f"held-out NLL {s['holdout_nll']:.4f} nats/dim" + (
                "" if skill != skill else f", done skill {skill:.3f}")  # nan: no episode ended
        if name == "dream_check":
            if "skipped" in s:
                return f"skipped: {s['skipped']}"
            worst = next(r for r in s["rows"] if r["action"] == s["worst_action"])
            return (f"held action {s['worst_action']}: {worst['dream_mean']:.0f} steps in the "
                    f"dream vs {worst['real_mean']:.0f} real ({s['worst_ratio']:.2f}x)"
                    + (" (cached)" if s.get("cached") else ""))
        if name == "controller":
            return (f"{s['generations']} generations, best fitness {s['best_fitness']:.1f} "
                    f"({s['environment']})")
        return (f"{s['mean']:.1f} +- {s['std']:.1f} over {s['episodes']} real episodes"
                + (" (cached)" if s.get("cached") else ""))

    lines = [f"run: {summary['run_dir']}"]
    for name, s in summary.items():
        if isinstance(s, dict):
            lines.append(f"  {name:<16} {s['wall_seconds']:>8.1f} s   {headline(name, s)}")
    lines.append(f"  {'total':<16} {summary['wall_seconds']:>8.1f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = config_from_args(parse_cli(cli_parser(__doc__.splitlines()[0]), argv))
    run_dir = prepare_run_dir(cfg)
    summary: dict[str, Any] = {"run_dir": str(run_dir)}
    started = time.perf_counter()
    for name, stage in stages():
        start = time.perf_counter()
        result = stage(cfg)
        summary[name] = {"wall_seconds": round(time.perf_counter() - start, 1), **result}
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    Path(run_dir, "summary.json").write_text(json.dumps(summary, indent=2))
    print(summary_table(summary))
    return summary



def cli() -> None:
    """The command ``worldmodels-run``: main() through run_cli (one-line errors)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
