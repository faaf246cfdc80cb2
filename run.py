"""The main job: every stage of the pipeline for one config, each skipped or resumed
when its output already exists, then a summary (wall time and figures per stage).

    python run.py --preset quick                       # CarRacing, a few minutes on 2 cores
    python run.py --config doom_takecover --preset quick
    python run.py --config doom_takecover --preset dream   # C trained in M's dream
    python run.py --run runs/CarRacing-v3/quick            # a run by its directory

Stages: collect -> train V -> encode -> train M -> check M's dream (for C trained in
it: held actions, dream against real; ``dream.max_held_ratio`` can stop the job here)
-> train C (CMA-ES, or the SB3 algorithm of ``controller.algo``; in the real env or in
the dream: ``controller.environment``) -> evaluate C (CMA-ES's ``selected`` controller
when there is one, else ``best``) and a random policy on ``controller.eval_episodes``
real episodes, in Gymnasium's renderer also when C trained with ``env.direct_render``.
Evaluations are kept in ``eval/`` and redone only when the controller's weights or the
episodes change.

With ``run.iterations`` > 1 (Ha's iterative training) that is round 1; each later round
collects ``run.iteration_episodes`` episodes played by the last round's controller,
encodes them, trains M ``run.iteration_memory_epochs`` more epochs on all the data,
trains C anew and evaluates it (agents/iterations.py). Each finished round is kept in
``iterations/round_<r>/``; a rerun continues the round it was in. The run's agent is
then the last round's, or with ``run.agent_round=best`` the round whose winning
controller selected highest (agents/agent_round.py).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agents.agent_round import put_back_previous, refuse_mixed_before, settle_agent
from agents.collect import collect, describe
from agents.dream_check import check_run, train_memory_checked
from agents.evaluation import evaluate, result_name
from agents.iterations import (
    check_round_sizes,
    collect_round,
    controller_round,
    finished_round,
    keep_round,
    memory_round,
)
from agents.sb3 import train_sb3
from agents.searches import train_searches
from worldmodels.checkpoint import file_digest, read_json, write_json_atomic
from worldmodels.config import ExperimentConfig, cli_parser, doc_summary, parse_cli
from worldmodels.encoding import encode_rollouts
from worldmodels.errors import run_cli
from worldmodels.frmdn_training import report_dict as memory_report
from worldmodels.preflight import preflight
from worldmodels.run_dir import RunDir, run_from_args
from worldmodels.vae_training import report_dict, train_vae


def trained_policy(cfg: ExperimentConfig) -> str:
    """What the controller stage trains: ``controller`` (CMA-ES) or an SB3 algorithm."""
    return "controller" if cfg.controller.algo == "cmaes" else cfg.controller.algo


#: the final evaluation of a run trained with the direct renderer plays Gymnasium's own
REFERENCE_RENDERER = ("env.direct_render=false",)


def evaluate_once(cfg: ExperimentConfig, run: RunDir, policy: str) -> dict[str, Any]:
    """``evaluate`` unless the run's ``eval/<name>.json`` already scores these weights
    on these episodes.

    The controller is ``selected`` when CMA-ES selected one, else ``best``. A run trained
    with ``env.direct_render=true`` is scored in Gymnasium's renderer
    (``env.direct_render=false``: the reference frames), its random baseline too.
    """
    c = cfg.controller
    which = run.controller.default_weights() if policy == "controller" else "best"
    weights = {"controller": run.controller.weights(which), "random": None}.get(
        policy, run.controller.sb3(policy, c.environment)[0])
    overrides = REFERENCE_RENDERER if cfg.env.direct_render else ()
    key = {"episodes": c.eval_episodes, "seed": cfg.seed,
           "weights": file_digest(weights) if weights else None,
           "weights_file": weights.name if weights else None, "overrides": list(overrides)}
    if weights:  # the policy sees [z, h]: V and M are part of what is scored
        key |= {**run.world_model_digests(), "agent_precision": c.agent_precision,
                "sb3_deterministic": c.sb3_deterministic}
    key["env"] = json.loads(json.dumps(asdict(cfg.env)))  # as the cached file holds it
    name = result_name(policy, which, overrides, c.environment)
    cached = read_json(run.eval_dir / f"{name}.json", {})
    if cached.get("key") == key:
        return {**cached, "cached": True}
    return evaluate(run, c.eval_episodes, policy=policy, seed=cfg.seed, engine=c.engine,
                    workers=c.workers, ray_address=c.ray_address, key=key, weights=which,
                    overrides=overrides, sb3_environment=c.environment)


def train_controller(cfg: ExperimentConfig, run: RunDir) -> dict[str, Any]:
    """CMA-ES, or the SB3 algorithm of ``controller.algo``."""
    if cfg.controller.algo == "cmaes":
        return {**asdict(train_searches(cfg, run)), "algo": "cmaes",
                "environment": cfg.controller.environment}
    _, saved = train_sb3(run, cfg)
    return saved


def _score(s: dict[str, Any]) -> str:
    renderer = (" in Gymnasium's renderer (trained with the direct one)"
                if "env.direct_render=false" in s.get("env_overrides", []) else "")
    weights = f", controller/{s['weights']}" if "weights" in s else ""
    seed = s.get("key", {}).get("seed")
    seeds = "" if seed is None else f" (the report seeds of seed={seed})"
    return (f"{s['mean']:.1f} +- {s['std']:.1f} over {s['episodes']} real episodes"
            + seeds + renderer + weights + (" (cached)" if s.get("cached") else ""))


def _memory(s: dict[str, Any]) -> str:
    skill = s.get("holdout_done_skill", float("nan"))
    se = s.get("holdout_nll_se", float("nan"))
    passed = s.get("held_passed", -1)
    return (f"held-out NLL {s['holdout_nll']:.4f}" + ("" if se != se else f" ± {se:.4f}")
            + f" nats/dim (epoch {s.get('best_epoch', s['epochs_done'])})") + (
        "" if skill != skill else f", done skill {skill:.3f}") + (  # nan: no episode ended
        "" if passed < 0 else (f", chosen among {passed} epoch{'s' * (passed > 1)} that "
                               "passed the held-action check" if passed
                               else ", no epoch passed the held-action check: chosen by "
                               "NLL alone")
        + f" (its worst: action {s['held_worst_action']}, {s['held_worst_ratio']:.2f}x)")


def _dream_check(s: dict[str, Any]) -> str:
    if "skipped" in s:
        return f"skipped: {s['skipped']}"
    worst = next(r for r in s["rows"] if r["action"] == s["worst_action"])
    return (f"held action {s['worst_action']}: {worst['dream_mean']:.0f} steps in the "
            f"dream vs {worst['real_mean']:.0f} real ({s['worst_ratio']:.2f}x)"
            + (" (cached)" if s.get("cached") else ""))


def _controller(s: dict[str, Any]) -> str:
    if s["algo"] == "cmaes":
        chosen = s.get("selected")
        return (f"{s['generations']} generations, best fitness {s['best_fitness']:.1f} "
                f"({s['environment']})" + (
                    f", selected {chosen['source']} of generation {chosen['generation']}: "
                    f"{chosen['selection_mean']:.1f} on {chosen['selection_episodes']} "
                    "selection episodes" if chosen else "") + (
                    f" (a second stage of {chosen['final']['candidates']} finalists)"
                    if chosen and chosen.get("final") else "") + (
                    f", from search {s['search']} of searches 0-{len(s['searches']) - 1} "
                    "(seeds " + ", ".join(str(r["seed"]) for r in s["searches"]) + ")"
                    if s.get("searches") else ""))
    return f"{s['algo']}: {s['timesteps']} steps ({s['environment']})"


@dataclass(frozen=True)
class Stage:
    """One step of the main job: ``run`` does (or resumes, or reuses) it and returns its
    figures; ``headline`` gives the summary line's text for them. ``adds`` names the
    figures that count this invocation's work (new episodes, their steps and seconds):
    a rerun that finds the stage finished by an earlier, interrupted invocation adds
    the earlier counts to its own, if the figures named in ``same`` are equal (the
    latents' V: latents of another V were made again, not added to; see
    :func:`run_stages`)."""

    name: str
    run: Callable[[ExperimentConfig, RunDir], dict[str, Any]]
    headline: Callable[[dict[str, Any]], str]
    adds: tuple[str, ...] = ()
    same: tuple[str, ...] = ()


#: the work counts of collection and encoding (their other figures describe the result)
COLLECT_ADDS = ("episodes_new", "steps_new", "seconds")
ENCODE_ADDS = ("encoded", "frames", "seconds")


STAGES: tuple[Stage, ...] = (
    Stage("collect", lambda cfg, run: describe(collect(cfg, run)),
          lambda s: f"{s['episodes_total']} episodes ({s['episodes_new']} new)", COLLECT_ADDS),
    Stage("vae", lambda cfg, run: report_dict(train_vae(cfg, run)),
          lambda s: (f"held-out MSE {s['holdout_mse']:.5f} = {s['mse_ratio']:.3f} x "
                     "mean frame's")),
    Stage("encode", lambda cfg, run: vars(encode_rollouts(cfg, run)),
          lambda s: f"{s['encoded']} of {s['episodes']} episodes encoded", ENCODE_ADDS,
          ("vae_digest",)),
    Stage("memory", lambda cfg, run: memory_report(train_memory_checked(cfg, run)), _memory),
    Stage("dream_check", check_run, _dream_check),
    Stage("controller", train_controller, _controller),
    Stage("evaluate", lambda cfg, run: evaluate_once(cfg, run, trained_policy(cfg)), _score),
    Stage("evaluate_random", lambda cfg, run: evaluate_once(cfg, run, "random"), _score),
)


def round_stages(number: int) -> tuple[Stage, ...]:
    """The stages of round ``number`` of iterative training: round 1 is :data:`STAGES`;
    a later round collects with the controller, encodes, trains M further, checks the
    dream, trains C anew and evaluates it (the random policy's score does not change)."""
    if number == 1:
        return STAGES
    same = {stage.name: stage for stage in STAGES}
    return (
        Stage("collect", lambda cfg, run: collect_round(cfg, run, number),
              lambda s: (f"{s['episodes_total']} episodes ({s['episodes_new']} new, "
                         f"controller, epsilon {s['epsilon']})"), COLLECT_ADDS),
        same["encode"],
        Stage("memory", lambda cfg, run: memory_round(cfg, run, number),
              lambda s: f"from epoch {s['round_start_epoch']}: {_memory(s)}"),
        same["dream_check"],
        # train_controller looked up at call time, so a test can stand in for it
        Stage("controller",
              lambda cfg, run: controller_round(cfg, run, number, train_controller),
              lambda s: f"anew: {_controller(s)}"),
        same["evaluate"],
    )


def run_stages(stages: tuple[Stage, ...], cfg: ExperimentConfig, run: RunDir,
               progress: Path) -> tuple[dict[str, Any], float]:
    """Each stage's figures with its wall time, by stage name, and the wall time the
    killed jobs before this one spent up to their last finished stage (0 if none).

    Every stage runs (each skips or resumes its own work), and its figures go into
    ``progress`` as soon as it ends. A rerun after a kill reads them back: a stage the
    killed job finished counts its wall time and its ``adds`` figures over both jobs, so
    a resumed job reports the work of its stages, not the near-zero time of finding it
    done. (The part of a stage cut off by the kill is not counted: nothing timed it.)
    The caller deletes ``progress`` once the job's summary is written."""
    kept = killed_jobs(progress)
    earlier, earlier_wall = kept.get("stages", {}), float(kept.get("wall_seconds", 0.0))
    started = time.perf_counter()
    figures: dict[str, Any] = {}
    for stage in stages:
        start = time.perf_counter()
        result = stage.run(cfg, run)
        result = {"wall_seconds": round(time.perf_counter() - start, 1), **result}
        before = earlier.get(stage.name)
        if isinstance(before, dict):
            same = all(before.get(k) == result.get(k) for k in stage.same)
            result = with_earlier(result, before, stage.adds if same else ())
        figures[stage.name] = result
        write_json_atomic(progress, {
            "wall_seconds": round(earlier_wall + time.perf_counter() - started, 1),
            "stages": {**earlier, **figures}})
    return figures, earlier_wall


def killed_jobs(progress: Path) -> dict[str, Any]:
    """What ``progress`` kept of killed jobs: ``{"wall_seconds": s, "stages": {name:
    figures}}``, or ``{}``. It is bookkeeping only, so a file that is unreadable or not
    of that form is named in a warning and set aside (``<name>.unreadable``), not an
    error."""
    if not progress.exists():
        return {}
    try:
        kept = json.loads(progress.read_bytes())
        stages = kept["stages"]
        if not (isinstance(stages, dict) and _seconds(kept) and all(
                isinstance(f, dict) and _seconds(f)
                and isinstance(f.get("invocations", 1), int) for f in stages.values())):
            raise ValueError("not of the form written by run.py")
    except (OSError, ValueError, TypeError, KeyError) as err:  # (JSON and UTF-8 errors too)
        aside = progress.with_name(progress.name + ".unreadable")
        progress.replace(aside)
        print(f"warning: {progress} is unreadable ({type(err).__name__}); set aside as "
              f"{aside.name}, so the stages killed jobs finished are not counted in this "
              "summary", file=sys.stderr)
        return {}
    return kept


def _seconds(figures: Any) -> bool:
    """``figures`` holds a number of seconds (``wall_seconds``)."""
    value = figures.get("wall_seconds") if isinstance(figures, dict) else None
    return isinstance(value, int | float) and not isinstance(value, bool)


def with_earlier(now: dict[str, Any], before: dict[str, Any], adds: tuple[str, ...],
                 ) -> dict[str, Any]:
    """A stage's figures ``now`` with those of the earlier invocation that finished it
    (``before``) counted in: wall time and the ``adds`` figures summed, the steps per
    second recomputed from the sums."""
    merged = {**now, "wall_seconds": round(now["wall_seconds"] + before.get("wall_seconds", 0), 1),
              "invocations": int(before.get("invocations", 1)) + 1}
    for key in adds:
        if isinstance(now.get(key), int | float) and isinstance(before.get(key), int | float):
            merged[key] = now[key] + before[key]
    if "steps_per_second" in merged and merged.get("seconds"):
        merged["steps_per_second"] = merged["steps_new"] / merged["seconds"]
    return merged


def play_round(cfg: ExperimentConfig, run: RunDir, number: int) -> dict[str, Any]:
    """Round ``number``'s figures: read back if the round is finished, else its stages
    run (each resuming or skipping its work) and the round is kept
    (``iterations/round_<r>/``)."""
    done = finished_round(run, number)
    if done is not None:
        return {**done, "reused": True}
    started = time.perf_counter()
    put_back_previous(cfg, run, number)  # (an earlier round may be the agent)
    files = run.round(number)
    stages, earlier_wall = run_stages(round_stages(number), cfg, run, files.progress)
    figures = {"round": number, **stages,
               "wall_seconds": round(earlier_wall + time.perf_counter() - started, 1)}
    if earlier_wall:
        figures["killed_jobs_seconds"] = earlier_wall  # (part of wall_seconds)
    # gone before the round is marked finished: a kill in between loses these counts
    # from the summary rather than counting them twice
    files.progress.unlink(missing_ok=True)
    keep_round(run, number, figures)
    return figures


def _stage_lines(figures: dict[str, Any], stages: tuple[Stage, ...]) -> list[str]:
    return [f"  {stage.name:<16} {figures[stage.name]['wall_seconds']:>8.1f} s   "
            f"{stage.headline(figures[stage.name])}" + (
                f" [over {n} invocations]" if (n := figures[stage.name].get("invocations"))
                else "")
            for stage in stages if stage.name in figures]


def summary_table(summary: dict[str, Any]) -> str:
    """One line per stage: wall time and its headline figure (per round, for iterative
    training)."""
    lines = [f"run: {summary['run_dir']}"]
    if "rounds" not in summary:
        lines += _stage_lines(summary, STAGES)
    for figures in summary.get("rounds", []):
        n = figures["round"]
        lines.append(f"round {n}: {figures['wall_seconds']:.1f} s" + (
            f" (finished before, kept in iterations/round_{n}/)" if figures.get("reused")
            else ""))
        lines += _stage_lines(figures, round_stages(n))
    agent = summary.get("agent")
    if agent:
        means = agent.get("selection_means")
        lines.append(f"agent: round {agent['round']} (run.agent_round={agent['rule']}"
                     + ("; selection means by round: " + ", ".join(
                         f"{n}: {m:.1f}" for n, m in means.items()) if means else "") + ")")
    total = f"  {'total':<16} {summary['wall_seconds']:>8.1f} s"
    rounds = summary.get("rounds", [])
    reused = sum(bool(r.get("reused")) for r in rounds)
    if reused:  # (this job's time leaves out the rounds it found finished)
        total += (f"   this job; the {len(rounds)} rounds took "
                  f"{sum(r['wall_seconds'] for r in rounds):.1f} s ({reused} finished before)")
    lines.append(total)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg, run = run_from_args(parse_cli(cli_parser(doc_summary(__doc__)), argv))
    preflight(cfg, run)  # before the first stage writes: V's and M's sizes, engines
    summary: dict[str, Any] = {"run_dir": str(run.path)}
    started = time.perf_counter()
    # (a run that played rounds and is now asked for one: round 1 becomes its agent, as
    # fewer rounds than played make the last of them the agent)
    if cfg.run.iterations == 1 and not run.round(1).summary.is_file():
        stages, earlier_wall = run_stages(STAGES, cfg, run, run.progress_file)
        summary.update(stages)
    else:
        refuse_mixed_before(cfg, run)
        check_round_sizes(cfg, run)  # (before any round plays or is reused)
        summary["rounds"] = [play_round(cfg, run, n) for n in range(1, cfg.run.iterations + 1)]
        summary["agent"] = settle_agent(cfg, run, summary["rounds"])
        # the killed jobs' part of the rounds this job finished (reused rounds: none)
        earlier_wall = sum(r.get("killed_jobs_seconds", 0.0) for r in summary["rounds"]
                           if not r.get("reused"))
    summary["wall_seconds"] = round(earlier_wall + time.perf_counter() - started, 1)
    run.progress_file.unlink(missing_ok=True)  # first: a kill after it loses, not doubles
    write_json_atomic(run.summary_file, summary)
    print(summary_table(summary))
    return summary



def cli() -> None:
    """The command ``worldmodels-run``: main() through run_cli (one-line errors)."""
    run_cli(main)


if __name__ == "__main__":
    cli()
