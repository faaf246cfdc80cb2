"""M on the real episodes of runs' controllers: where does the dream misjudge them?

    python tools/m_on_real.py --runs /work/runs/tc9/s16,/work/runs/tc13/real-s29 \\
        --episodes 50 seed=0 --out /tmp/m_on_real.json

For every controller of the runs (each finalist of a run's second selection stage, or
its selected C), all on one world model (the same V, M and env config): play
``--episodes`` real episodes on the report seeds of ``seed=S`` (default 0; the same
episodes for every controller), keep each step's latent and action, and feed them to M
(teacher forcing, :mod:`worldmodels.teacher_forcing`). Per controller:

* ``real``: the mean return of those episodes, and ``steps``, their mean length;
* ``nll``: M's mean -log p(z_{t+1} | h_{t+1}) per latent dimension on them;
* ``rule``: how long the dream's end rule (the first run's ``dream.done`` and
  ``dream.done_threshold``, which the command may override, and its cap
  ``dream.max_steps``) lets those real episodes live, on average, and ``early``: the
  chance that it ends one before its last step (with ``dream.done=sample``, the chance
  of a sampled end; with ``threshold``, the fraction ended). A controller whose
  ``rule`` falls far below its ``steps`` is one M's done head kills early, so the dream
  scores it below its real worth;
* ``p_done``: M's mean calibrated P(done) on the steps before the last.

M is the runs' own M alone: the other Ms of a ``dream.ensemble`` are not read, so for
runs that dreamt with an ensemble, ``rule`` and ``p_done`` are their M's alone (the
ensemble's dream ends on the highest P(done) of any M).

Prints a markdown table and, last, Spearman's rank correlation of the real return with
``rule`` and with ``-nll`` over the controllers. ``--out`` keeps the rows as JSON.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import this checkout, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
from typing import Any

import numpy as np

from agents.batched import Episode, EpisodeResult
from agents.finalists import (
    distinct_runs,
    scored_controllers,
    spearman,
    tool_overrides,
    world_model_key,
)
from agents.rollouts import RolloutWorker
from agents.seeds import evaluation_seeds
from worldmodels.atomic import check_output_file
from worldmodels.checkpoint import write_json_atomic
from worldmodels.config import ConfigError, DreamConfig, cli_parser, doc_summary, parse_cli
from worldmodels.errors import run_cli
from worldmodels.run_dir import as_run
from worldmodels.teacher_forcing import dream_rule_early, dream_rule_length, teacher_forced


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = cli_parser(doc_summary(__doc__))
    parser.add_argument("--runs", required=True, help="comma-separated run directories")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--out", default="", help="a JSON file for the rows")
    args: argparse.Namespace = parse_cli(parser, argv)
    if args.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {args.episodes}")
    out = check_output_file(args.out) if args.out else None  # (before any play)
    runs = distinct_runs([as_run(p) for p in args.runs.split(",") if p])
    if not runs:
        raise ConfigError("--runs names no run")
    rule_overrides, seed = tool_overrides(
        runs[0], args.overrides, ("dream.done=", "dream.done_threshold="),
        "seed=, dream.done= and dream.done_threshold=")
    first, key = runs[0].load_config(), world_model_key(runs[0])
    for run in runs[1:]:  # every controller plays with the first run's V, M and env
        if world_model_key(run) != key or run.load_config().env != first.env:
            raise ConfigError(f"{run.home}: its V, M or env differ from {runs[0].home}'s; "
                              "one world model must judge them all")
    dream = runs[0].load_config(rule_overrides).dream
    pos_weight = runs[0].done_pos_weight()
    worker = RolloutWorker(runs[0], batch=first.controller.batch_envs)
    memory = worker.agent.memory
    seeds = evaluation_seeds(seed, args.episodes)
    rows: list[dict[str, Any]] = []
    print("| run | controller | real | steps | rule | early | p_done | nll |\n"
          "|---|---|---|---|---|---|---|---|")
    try:
        # every run's controllers are found before the first episode is played
        for run, name, flat, _ in scored_controllers(runs, worker.controller):
            results = worker.play([Episode(s, np.asarray(flat, np.float32), trace=True)
                                   for s in seeds])
            rows.append(score_episodes(memory, results, dream, pos_weight,
                                       {"run": str(run.home), "controller": name}))
            r = rows[-1]
            print(f"| {run.home.name} | {name} | {r['real']:.1f} | {r['steps']:.1f} | "
                  f"{r['rule']:.1f} | {r['early']:.2f} | {r['p_done']:.4f} | "
                  f"{r['nll']:.4f} |", flush=True)
    finally:
        worker.actor.close()
    if out is not None:
        write_json_atomic(out, {"seed": seed, "episodes": args.episodes,
                                           "dream": rule_overrides, "rows": rows})
    if len(rows) > 1:
        real = [r["real"] for r in rows]
        print(f"Spearman over {len(rows)} controllers: real vs rule "
              f"{spearman(real, [r['rule'] for r in rows]):.3f}, real vs -nll "
              f"{spearman(real, [-r['nll'] for r in rows]):.3f}")
    return rows


def score_episodes(memory: Any, results: list[EpisodeResult], dream: DreamConfig,
                   pos_weight: float, row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with one controller's figures over its traced real episodes (the
    columns of the module's docstring). A dream capped at ``dream.max_steps`` caps the
    rule's length too."""
    nll, rule, early, p_mid = [], [], [], []
    for res in results:
        forced = teacher_forced(memory, np.stack(res.latents), np.stack(res.actions),
                                pos_weight)
        nll.append(forced.nll)
        if forced.p_done is not None:
            p = forced.p_done[:dream.max_steps] if dream.max_steps else forced.p_done
            rule.append(dream_rule_length(p, dream.done, dream.done_threshold))
            # an episode longer than the cap always ends early in the dream
            early.append(dream_rule_early(p, dream.done, dream.done_threshold)
                         if len(p) == len(forced.p_done) else 1.0)
            p_mid.append(forced.p_done[:-1])
    nan = float("nan")
    return {**row, "real": float(np.mean([r.ret for r in results])),
            "steps": float(np.mean([r.steps for r in results])),
            "rule": float(np.mean(rule)) if rule else nan,
            "early": float(np.mean(early)) if early else nan,
            "p_done": float(np.concatenate(p_mid).mean()) if p_mid else nan,
            "nll": float(np.concatenate(nll).mean())}


if __name__ == "__main__":
    run_cli(main)
